//! Per-connection identities: each client connection logs in as its own user, so user-targeted
//! events can be tested the way production sends them.
//!
//! Two sources:
//! - `--jwt-secret`: the tool signs an HS256 token per connection (claims `sub`, `iat`, `exp`),
//!   exactly as the broker verifies them (`broker.jwtSecret`). Connection `i` is user
//!   `i mod --users` (or user `i` with `--users 0`), named by `--user-template` (`{u}` is the
//!   user number).
//! - `--token-file`: tokens issued elsewhere, one per line; connection `i` uses line `i mod n`,
//!   and its user is the token's `sub` (read without verifying: the broker verifies).

use anyhow::{anyhow, bail, Context as _};
use base64::Engine as _;
use jsonwebtoken::{EncodingKey, Header};

use crate::cli::TargetArgs;

/// Tokens are valid this long after the run starts.
const TOKEN_LIFETIME_S: u64 = 24 * 3600;

/// Where each client connection's token comes from.
pub enum Identities {
    Signed {
        key: EncodingKey,
        template: String,
        /// 0: one user per connection.
        users: usize,
        iat: u64,
    },
    File {
        tokens: Vec<String>,
        subs: Vec<String>,
    },
}

impl Identities {
    /// From `--jwt-secret` or `--token-file`; `None` without either.
    pub fn from_args(args: &TargetArgs) -> anyhow::Result<Option<Self>> {
        if let Some(secret) = &args.jwt_secret {
            if secret.is_empty() {
                bail!("--jwt-secret is empty");
            }
            if !args.user_template.contains("{u}") && args.users != 1 {
                bail!(
                    "--user-template `{}` has no `{{u}}`: every connection would be the same user \
                     (say --users 1 if that is meant)",
                    args.user_template
                );
            }
            let iat = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            return Ok(Some(Identities::Signed {
                key: EncodingKey::from_secret(secret.as_bytes()),
                template: args.user_template.clone(),
                users: args.users,
                iat,
            }));
        }
        let Some(path) = &args.token_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--token-file: cannot read {}", path.display()))?;
        let mut tokens = Vec::new();
        let mut subs = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let token = line.trim();
            if token.is_empty() || token.starts_with('#') {
                continue;
            }
            let sub = subject(token)
                .map_err(|e| anyhow!("--token-file {} line {}: {e}", path.display(), n + 1))?;
            tokens.push(token.to_owned());
            subs.push(sub);
        }
        if tokens.is_empty() {
            bail!("--token-file {}: no tokens in the file", path.display());
        }
        Ok(Some(Identities::File { tokens, subs }))
    }

    /// How many distinct users there are among `clients` client connections.
    pub fn user_count(&self, clients: usize) -> usize {
        match self {
            Identities::Signed { users: 0, .. } => clients,
            Identities::Signed { users, .. } => *users,
            Identities::File { tokens, .. } => tokens.len(),
        }
    }

    /// The user number of connection `index`.
    pub fn user_of(&self, index: usize) -> usize {
        match self {
            Identities::Signed { users: 0, .. } => index,
            Identities::Signed { users, .. } => index % users,
            Identities::File { tokens, .. } => index % tokens.len(),
        }
    }

    /// The name of user number `u` (the token's `sub`).
    pub fn username(&self, u: usize) -> String {
        match self {
            Identities::Signed { template, .. } => template.replace("{u}", &u.to_string()),
            Identities::File { subs, .. } => subs[u % subs.len()].clone(),
        }
    }

    /// The token of connection `index`.
    pub fn token_for(&self, index: usize) -> String {
        match self {
            Identities::Signed { key, iat, .. } => {
                let claims = serde_json::json!({
                    "sub": self.username(self.user_of(index)),
                    "iat": iat,
                    "exp": iat + TOKEN_LIFETIME_S,
                });
                // HS256 over a JSON object cannot fail; an empty token would be refused (401).
                jsonwebtoken::encode(&Header::default(), &claims, key).unwrap_or_default()
            }
            Identities::File { tokens, .. } => tokens[index % tokens.len()].clone(),
        }
    }
}

/// The `sub` claim of a JWT, read without verifying the signature.
fn subject(token: &str) -> Result<String, String> {
    let payload = token
        .split('.')
        .nth(1)
        .ok_or("not a JWT (header.payload.signature)")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|e| format!("the payload is not base64url: {e}"))?;
    let claims: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("the payload is not JSON: {e}"))?;
    match claims.get("sub").and_then(|s| s.as_str()) {
        Some(s) if !s.is_empty() => Ok(s.to_owned()),
        _ => Err("the token has no `sub` claim (the broker needs it)".into()),
    }
}

/// A fixed, well-mixed hash of a number (splitmix64's finaliser): deterministic picks that every
/// worker makes alike, with no random number generator to seed.
pub fn mix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(extra: &[&str]) -> TargetArgs {
        let mut argv = vec!["loadtest"];
        argv.extend_from_slice(extra);
        argv.push("connect");
        crate::cli::Cli::try_parse_from(argv)
            .expect("parses")
            .target
    }

    #[test]
    fn signed_tokens_carry_the_users_name() {
        let ids = Identities::from_args(&args(&["--jwt-secret", "s", "--users", "3"]))
            .expect("valid")
            .expect("some");
        assert_eq!(ids.user_of(7), 1);
        assert_eq!(ids.username(1), "lt-user-1");
        assert_eq!(subject(&ids.token_for(7)).as_deref(), Ok("lt-user-1"));
        assert_eq!(ids.user_count(100), 3);
    }

    #[test]
    fn token_files_are_read_and_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = dir.path().join("t.txt");
        let ids = Identities::from_args(&args(&["--jwt-secret", "s"]))
            .expect("valid")
            .expect("some");
        std::fs::write(
            &good,
            format!("{}\n\n{}\n", ids.token_for(0), ids.token_for(5)),
        )
        .expect("write");
        let f = Identities::from_args(&args(&["--token-file", &good.to_string_lossy()]))
            .expect("valid")
            .expect("some");
        assert_eq!(f.user_count(10), 2);
        assert_eq!(f.username(f.user_of(3)), "lt-user-5");
        let bad = dir.path().join("bad.txt");
        std::fs::write(&bad, "not-a-token\n").expect("write");
        let e = Identities::from_args(&args(&["--token-file", &bad.to_string_lossy()]))
            .err()
            .expect("refused");
        assert!(e.to_string().contains("line 1"), "{e}");
        assert!(
            Identities::from_args(&args(&["--jwt-secret", "s", "--user-template", "bob"])).is_err()
        );
    }
}
