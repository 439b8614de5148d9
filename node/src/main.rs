//! The `leasehold` binary: `serve`, `local-cluster`, and the client commands.

mod cli;
mod commands;

#[tokio::main]
async fn main() {
    let code = cli::run().await;
    std::process::exit(code);
}
