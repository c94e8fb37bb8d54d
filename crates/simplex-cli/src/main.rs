//! `simplex`: the command line of the simplex project (2-simplicial Transformers).

mod attn_cmd;
mod bench_cmd;
mod compare_cmd;
mod data_args;
mod device;
mod eval_cmd;
mod eval_task_cmd;
mod fit_cmd;
mod generate_cmd;
mod interrupt;
mod launch;
mod model_cmd;
mod plot_cmd;
mod prepare_cmd;
mod sweep_cmd;
mod train_cmd;
mod train_ranks;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "simplex",
    version,
    about = "2-simplicial attention and language models: compare attention kinds on reasoning tasks, run, check, benchmark, train, sample, fit scaling laws"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train dot-product, trilinear and determinant attention models of equal size on a
    /// reasoning task over several seeds; print the table, plot the curves (no flags: the
    /// match3 demo on the CPU).
    Compare(Box<compare_cmd::CompareArgs>),
    /// Score a task model saved by `simplex compare` (per-token accuracy, exact match).
    EvalTask(eval_task_cmd::EvalTaskArgs),
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
    /// Tokenize text files and folders once into a dataset folder that runs share
    /// (`train --data DATA_DIR`).
    Prepare(prepare_cmd::PrepareArgs),
    /// Train a language model on text files or a prepared dataset (new or --resume).
    Train(Box<train_cmd::TrainArgs>),
    /// Sample text from a trained checkpoint.
    Generate(generate_cmd::GenerateArgs),
    /// NLL of a language-model checkpoint on eval sets (MMLU, HumanEval, grade-school math,
    /// held-out text) or on new text; appends to RUN_DIR/evals.json.
    Eval(Box<eval_cmd::EvalArgs>),
    /// Model configs: parameter counts and FLOPs.
    Model {
        #[command(subcommand)]
        command: model_cmd::ModelCommand,
    },
    /// Train and score a grid of model sizes x attention kinds x seeds (resumable).
    Sweep(sweep_cmd::SweepArgs),
    /// Draw the loss curves of runs (PNG and SVG).
    Plot(plot_cmd::PlotArgs),
    /// Fit scaling laws to a results CSV (kind, eval_set, params, loss): alpha, beta, R^2 per
    /// kind and eval set, and L = E + A * N^-alpha with bootstrap intervals.
    Fit(fit_cmd::FitArgs),
}

/// Restores the default action of SIGPIPE (the Rust runtime ignores it), so that writing to a
/// closed pipe (`simplex model info | head -1`) ends the process quietly, as other Unix tools
/// do, instead of `println!` panicking on the broken-pipe error.
#[cfg(unix)]
fn quiet_on_closed_pipe() {
    // SAFETY: called first thing in `main`, before any other thread exists; `signal` with
    // SIG_DFL installs no handler code.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(not(unix))]
fn quiet_on_closed_pipe() {}

/// Lets every option that takes a value take a negative number (`--lr -1`), in `cmd` and all
/// its subcommands, so that the value reaches its check and the error explains it, instead of
/// clap reading `-1` as an unknown flag. Options of floating-point numbers take any value that
/// starts with `-` (`-1e-3`, `-inf`, which clap does not count as numbers) and report it.
fn negative_numbers_as_values(cmd: clap::Command) -> clap::Command {
    cmd.mut_args(|a| {
        if !a.get_action().takes_values() {
            a
        } else if a.get_value_parser().type_id() == std::any::TypeId::of::<f64>() {
            a.allow_hyphen_values(true)
        } else {
            a.allow_negative_numbers(true)
        }
    })
    .mut_subcommands(negative_numbers_as_values)
}

/// Whether `e` comes from writing to a closed pipe (a reader such as `head` that went away).
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn main() {
    quiet_on_closed_pipe();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::from_arg_matches(&negative_numbers_as_values(Cli::command()).get_matches())
        .unwrap_or_else(|e| e.exit());
    let result = match cli.command {
        Command::Compare(a) => compare_cmd::run(*a),
        Command::EvalTask(a) => eval_task_cmd::run(a),
        Command::Attn { command } => attn_cmd::run(command),
        Command::Bench { command } => bench_cmd::run(command),
        Command::Prepare(a) => prepare_cmd::run(a),
        Command::Train(a) => train_cmd::run(*a),
        Command::Generate(a) => generate_cmd::run(a),
        Command::Eval(a) => eval_cmd::run(*a),
        Command::Model { command } => model_cmd::run(command),
        Command::Sweep(a) => sweep_cmd::run(a),
        Command::Plot(a) => plot_cmd::run(a),
        Command::Fit(a) => fit_cmd::run(a),
    };
    if let Err(e) = result {
        if is_broken_pipe(&e) {
            std::process::exit(0);
        }
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
