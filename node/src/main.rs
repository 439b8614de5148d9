//! The `leasehold` binary: `serve`, `local-cluster`, and the client commands.

mod cli;
mod commands;

/// mimalloc instead of glibc's malloc: under many threads glibc's arenas spent about a
/// tenth of a node's CPU in malloc and free (docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let code = cli::run().await;
    std::process::exit(code);
}
