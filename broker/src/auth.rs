//! User identity from a signed token: an HMAC-SHA256 JWT whose `sub` claim is the username.
//!
//! The token comes as `?token=` (browsers cannot set headers on a WebSocket) or as
//! `Authorization: Bearer`. Without a token a connection is anonymous; a token that does not
//! verify is refused, never silently downgraded to anonymous.

use std::collections::HashSet;
use std::sync::Arc;

use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, Validation};
use serde::Deserialize;

#[derive(Deserialize)]
struct Claims {
    sub: String,
}

/// Verifies user tokens with the configured secret.
pub struct TokenVerifier {
    key: Option<DecodingKey>,
    validation: Validation,
}

impl TokenVerifier {
    pub fn new(secret: Option<&str>) -> TokenVerifier {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.required_spec_claims = HashSet::from(["sub".to_string()]);
        validation.validate_exp = true;
        // `nbf` (not before) is checked when present, with the same leeway as `exp`.
        validation.validate_nbf = true;
        validation.leeway = 5;
        TokenVerifier {
            key: secret.map(|s| DecodingKey::from_secret(s.as_bytes())),
            validation,
        }
    }

    /// The username in `token`, or why it was refused (for the log and the 401 body).
    pub fn verify(&self, token: &str) -> Result<Arc<str>, String> {
        let Some(key) = &self.key else {
            return Err("tokens are not accepted: the broker has no broker.jwtSecret".into());
        };
        match jsonwebtoken::decode::<Claims>(token, key, &self.validation) {
            Ok(data) if !data.claims.sub.is_empty() => Ok(data.claims.sub.into()),
            Ok(_) => Err("the token's sub claim is empty".into()),
            Err(e) => Err(match e.kind() {
                ErrorKind::ExpiredSignature => "the token has expired".into(),
                ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".into(),
                ErrorKind::InvalidSignature => "the token's signature does not verify".into(),
                ErrorKind::MissingRequiredClaim(c) => format!("the token has no {c} claim"),
                ErrorKind::InvalidAlgorithm => "the token is not signed with HS256".into(),
                _ => format!("the token is not valid: {e}"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn token(secret: &str, claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("encodes")
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    #[test]
    fn verifies_sub_and_exp() {
        let v = TokenVerifier::new(Some(SECRET));
        let good = token(
            SECRET,
            serde_json::json!({"sub": "alice", "exp": now() + 600}),
        );
        assert_eq!(v.verify(&good).as_deref(), Ok("alice"));
        let no_exp = token(SECRET, serde_json::json!({"sub": "bob"}));
        assert_eq!(v.verify(&no_exp).as_deref(), Ok("bob"));
        let expired = token(
            SECRET,
            serde_json::json!({"sub": "alice", "exp": now() - 3600}),
        );
        assert_eq!(v.verify(&expired), Err("the token has expired".into()));
        let forged = token(
            "another secret of enough length",
            serde_json::json!({"sub": "alice"}),
        );
        assert!(v.verify(&forged).is_err());
        assert!(v.verify("not.a.token").is_err());
        assert!(TokenVerifier::new(None).verify(&good).is_err());
    }

    #[test]
    fn not_before_is_checked_with_the_exp_leeway() {
        let v = TokenVerifier::new(Some(SECRET));
        let early = token(
            SECRET,
            serde_json::json!({"sub": "alice", "nbf": now() + 600, "exp": now() + 1200}),
        );
        assert_eq!(
            v.verify(&early),
            Err("the token is not valid yet (nbf)".into())
        );
        // Within the 5 s leeway (clock skew), and in the past: accepted.
        let skewed = token(
            SECRET,
            serde_json::json!({"sub": "alice", "nbf": now() + 2}),
        );
        assert_eq!(v.verify(&skewed).as_deref(), Ok("alice"));
        let past = token(
            SECRET,
            serde_json::json!({"sub": "alice", "nbf": now() - 60}),
        );
        assert_eq!(v.verify(&past).as_deref(), Ok("alice"));
    }
}
