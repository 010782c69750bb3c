//! `admin-gui`: connect to a broker's ops listener and watch and steer it.

use clap::Parser;

use admin_gui::client::Token;
use admin_gui::secrets::Secrets;
use admin_gui::settings::SettingsStore;
use admin_gui::{AdminApp, Options};

/// Desktop admin app for the broker: live connections, charts, event injection, kick, drain.
///
/// Without options it opens with the URL remembered from the last Connect, and its token from
/// the system keyring.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// The broker's ops URL, e.g. http://127.0.0.1:9090; connects at start.
    #[arg(long, env = "BROKER_ADMIN_URL")]
    url: Option<String>,
    /// The admin token (broker.admin.token). Prefer the environment variable: command lines
    /// are visible to other users of the machine.
    #[arg(long, env = "BROKER_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Initial window size, WIDTHxHEIGHT in points.
    #[arg(long, default_value = "1440x900", value_parser = parse_size)]
    size: (f32, f32),
}

fn parse_size(s: &str) -> Result<(f32, f32), String> {
    let (w, h) = s
        .split_once('x')
        .ok_or_else(|| format!("{s}: expected WIDTHxHEIGHT, e.g. 1440x900"))?;
    let parse = |v: &str| {
        v.trim()
            .parse::<f32>()
            .ok()
            .filter(|v| *v >= 200.0)
            .ok_or_else(|| format!("{s}: width and height must be numbers of at least 200"))
    };
    Ok((parse(w)?, parse(h)?))
}

fn main() -> eframe::Result {
    let cli = Cli::parse();
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("Broker admin")
            .with_inner_size([cli.size.0, cli.size.1])
            .with_min_inner_size([900.0, 560.0]),
        ..Default::default()
    };
    eframe::run_native(
        "broker-admin-gui",
        options,
        Box::new(move |cc| {
            let app = AdminApp::new(
                &cc.egui_ctx,
                Options {
                    url: cli.url,
                    token: cli.token.map(Token::new),
                    settings: SettingsStore::user_default(),
                    secrets: Secrets::system(),
                },
            )?;
            Ok(Box::new(app))
        }),
    )
}
