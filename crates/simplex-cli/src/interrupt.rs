//! Ctrl-C (SIGINT) and SIGTERM: the first asks the run to stop after its current update with a
//! checkpoint; a second one ends the process at once.

use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Result;
use simplex_train::StopFlag;

static SIGNALS: AtomicUsize = AtomicUsize::new(0);

/// Installs the handler (once per process) and returns the flag it sets.
pub fn stop_on_signal() -> Result<StopFlag> {
    let flag = StopFlag::new();
    let f = flag.clone();
    ctrlc::set_handler(move || {
        if SIGNALS.fetch_add(1, Ordering::SeqCst) == 0 {
            eprintln!(
                "\ninterrupted: stopping after the current update and writing a checkpoint (interrupt again to quit at once)"
            );
            f.set();
        } else {
            eprintln!("\ninterrupted again: quitting without a checkpoint");
            std::process::exit(130);
        }
    })?;
    Ok(flag)
}

/// The exit status of a run that stopped on a signal (128 + SIGINT, as shells report it).
pub const INTERRUPTED_EXIT: i32 = 130;
