//! `chat`: the real-time chat back end on one machine.

use std::io::Write;

use anyhow::Context;
use chat_local::Settings;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "chat",
    version,
    about = "Real-time chat over WebSockets: API Gateway's WebSocket API, emulated locally, with an embedded store",
    long_about = "Real-time chat over WebSockets.\n\n\
        `chat serve` runs the chat on this machine: WebSockets at ws://ADDR/STAGE (the same \
        protocol as the AWS deployment), the management API at http://ADDR/STAGE/@connections/ID \
        (loopback clients only), and the web client at http://ADDR/.\n\n\
        Every flag can also be set from the environment (shown as [env: ...]), or from a .env \
        file in the working directory; flags win over the environment, which wins over .env. \
        Logs go to stderr; RUST_LOG sets their level (e.g. RUST_LOG=debug)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the chat server.
    Serve(Box<Settings>),
    /// Print an HS256 token for local testing of authentication (see `serve --jwt-secret`).
    Token(TokenArgs),
}

#[derive(clap::Args)]
struct TokenArgs {
    /// The secret the server verifies with.
    #[arg(long, env = "CHAT_JWT_SECRET", hide_env_values = true)]
    secret: String,
    /// The user id (`sub`).
    #[arg(long)]
    sub: String,
    /// The display name (`name` claim); the chat shows `sub` without it.
    #[arg(long)]
    name: Option<String>,
    /// How long the token is valid.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: std::time::Duration,
    /// The `iss` claim.
    #[arg(long, env = "CHAT_JWT_ISSUER")]
    issuer: Option<String>,
    /// The `aud` claim.
    #[arg(long, env = "CHAT_JWT_AUDIENCE")]
    audience: Option<String>,
    /// A `private.` room the user may enter (an exact name, or a prefix ending in `*`); repeat
    /// for more (the `rooms` claim).
    #[arg(long = "room")]
    rooms: Vec<String>,
}

fn print_token(args: TokenArgs) -> anyhow::Result<()> {
    let now = chat_auth::now_secs();
    let claims = chat_auth::MintClaims {
        sub: args.sub,
        name: args.name,
        exp: now + args.ttl.as_secs(),
        iat: now,
        iss: args.issuer,
        aud: args.audience,
        rooms: args.rooms,
    };
    println!(
        "{}",
        chat_auth::mint_hs256(args.secret.as_bytes(), &claims)?
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // Real environment variables win over .env: dotenvy never overwrites one that is set.
    let _ = dotenvy::dotenv();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Serve(settings) => tokio::runtime::Runtime::new()
            .context("cannot start the async runtime")?
            .block_on(serve(*settings)),
        Command::Token(args) => print_token(args),
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let stage = settings.stage.clone();
    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind(settings.addr)
        .await
        .with_context(|| format!("cannot listen on {}", settings.addr))?;
    let server = chat_local::run(listener, settings, shutdown.clone())
        .await
        .context("cannot start the server")?;
    let addr = server.local_addr;
    // Tests and scripts read this line to find the port when given port 0.
    println!("chat listening on http://{addr}/ (WebSocket: ws://{addr}/{stage})");
    std::io::stdout().flush()?;
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        shutdown.cancel();
    });
    server.wait().await
}

/// Ctrl-C or SIGTERM.
async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
