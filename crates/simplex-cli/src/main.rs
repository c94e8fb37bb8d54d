//! `simplex`: the command line of the simplex project (2-simplicial Transformers).

mod attn_cmd;
mod bench_cmd;
mod device;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "simplex",
    version,
    about = "2-simplicial attention: run, check, benchmark"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the 2-simplicial attention op on tensors from a file.
    Attn {
        #[command(subcommand)]
        command: attn_cmd::AttnCommand,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        command: bench_cmd::BenchCommand,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Attn { command } => attn_cmd::run(command),
        Command::Bench { command } => bench_cmd::run(command),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
