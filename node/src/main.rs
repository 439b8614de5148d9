//! The `leasehold` binary: `serve`, `local-cluster`, and the client commands.

mod cli;

#[tokio::main]
async fn main() {
    let code = cli::run().await;
    std::process::exit(code);
}
