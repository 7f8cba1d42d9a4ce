//! Progress of an evaluation on stderr, counted in prompt runs (one prompt through the model
//! once: the reference prompts, then every prompt for the full model, the empty circuit and each
//! circuit). A bar with an ETA on a terminal; otherwise one plain line every few seconds, for the
//! logs of batch jobs; nothing with `--quiet`.

use std::cell::Cell;
use std::io::IsTerminal;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Set once by `main` from the global `--quiet` flag.
static QUIET: AtomicBool = AtomicBool::new(false);

/// Silences progress output for the rest of the process (`--quiet`).
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// Seconds between two log lines when stderr is not a terminal; `CIRCUIT_PROGRESS_SECONDS`
/// overrides it (0 prints a line after every batch).
const LOG_EVERY_SECONDS: u64 = 5;

enum Sink {
    Bar(indicatif::ProgressBar),
    Log {
        every: Duration,
        last: Cell<Instant>,
    },
    Off,
}

struct State {
    what: String,
    sink: Sink,
    start: Instant,
    done: Cell<u64>,
    total: Cell<u64>,
    /// A search (`discover`): how many circuits it evaluates is known only as it goes, so
    /// progress is the count of circuits evaluated so far, with no total, percentage or ETA
    /// (a total that grows with each step would read 100% throughout).
    searched: Option<Cell<u64>>,
}

/// The progress of one evaluation; cloned into the session's callbacks.
#[derive(Clone)]
pub struct Progress(Rc<State>);

pub type Callback = Box<dyn Fn(usize)>;

impl Progress {
    /// Progress of evaluating `what` (a file name), shown as stderr and `--quiet` allow.
    pub fn start(what: &str) -> Progress {
        Progress::new(what, false)
    }

    /// Progress of a search over circuits of `what`, whose number of evaluations is not known
    /// in advance: [`Progress::evaluated`] counts them.
    pub fn start_search(what: &str) -> Progress {
        Progress::new(what, true)
    }

    fn new(what: &str, search: bool) -> Progress {
        let sink = if QUIET.load(Ordering::Relaxed) {
            Sink::Off
        } else if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new(0);
            let template = if search {
                "{spinner} {msg}, {pos} prompt runs, {elapsed} elapsed"
            } else {
                "{spinner} {msg} [{bar:30}] {pos}/{len} prompt runs, {elapsed} elapsed, about {eta} left"
            };
            bar.set_style(
                indicatif::ProgressStyle::with_template(template)
                    .expect("a valid template")
                    .progress_chars("=> "),
            );
            if search {
                bar.enable_steady_tick(Duration::from_millis(200));
                bar.set_message(format!("discovering in {what}: ranking"));
            } else {
                bar.set_message(format!("evaluating {what}"));
            }
            Sink::Bar(bar)
        } else {
            let seconds = std::env::var("CIRCUIT_PROGRESS_SECONDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(LOG_EVERY_SECONDS);
            Sink::Log {
                every: Duration::from_secs(seconds),
                last: Cell::new(Instant::now()),
            }
        };
        Progress(Rc::new(State {
            what: what.to_string(),
            sink,
            start: Instant::now(),
            done: Cell::new(0),
            total: Cell::new(0),
            searched: search.then(|| Cell::new(0)),
        }))
    }

    /// A search has evaluated `n` circuits exactly so far.
    pub fn evaluated(&self, n: usize) {
        let Some(searched) = &self.0.searched else {
            return;
        };
        searched.set(n as u64);
        if let Sink::Bar(bar) = &self.0.sink {
            bar.set_message(format!(
                "discovering in {}: {n} circuits evaluated exactly",
                self.0.what
            ));
        }
    }

    /// `(on_batch, on_total)` for `SessionOptions`; `None` when nothing is shown.
    pub fn callbacks(&self) -> (Option<Callback>, Option<Callback>) {
        if matches!(self.0.sink, Sink::Off) {
            return (None, None);
        }
        let on_batch = self.clone();
        let on_total = self.clone();
        (
            Some(Box::new(move |n| on_batch.advance(n as u64))),
            Some(Box::new(move |n| on_total.set_total(n as u64))),
        )
    }

    fn set_total(&self, total: u64) {
        self.0.total.set(total);
        if let Sink::Bar(bar) = &self.0.sink {
            bar.set_length(total);
        }
    }

    fn advance(&self, n: u64) {
        let state = &self.0;
        state.done.set(state.done.get() + n);
        match &state.sink {
            Sink::Bar(bar) => bar.inc(n),
            Sink::Log { every, last } => {
                if last.get().elapsed() >= *every {
                    last.set(Instant::now());
                    eprintln!("{}", self.log_line());
                }
            }
            Sink::Off => {}
        }
    }

    /// `evaluating F: 120/480 prompt runs (25%), 10s elapsed, about 30s left`, or for a search
    /// `discovering in F: 12 circuits evaluated exactly, 1600 prompt runs, 10s elapsed`.
    fn log_line(&self) -> String {
        let state = &self.0;
        if let Some(searched) = &state.searched {
            return format!(
                "discovering in {}: {} circuits evaluated exactly, {} prompt runs, {:.0}s elapsed",
                state.what,
                searched.get(),
                state.done.get(),
                state.start.elapsed().as_secs_f64()
            );
        }
        let (done, total) = (state.done.get(), state.total.get().max(state.done.get()));
        let elapsed = state.start.elapsed().as_secs_f64();
        let left = if done > 0 {
            elapsed * (total - done) as f64 / done as f64
        } else {
            0.0
        };
        let percent = (100 * done).checked_div(total).unwrap_or(0);
        format!(
            "evaluating {}: {done}/{total} prompt runs ({percent}%), {:.0}s elapsed, about {:.0}s left",
            state.what, elapsed, left
        )
    }

    /// Prints a line on stderr (above the bar, which it would otherwise garble), even when
    /// quiet: the lines asked for (`--verbose`) are not progress.
    pub fn println(&self, line: &str) {
        match &self.0.sink {
            Sink::Bar(bar) => bar.println(line),
            _ => eprintln!("{line}"),
        }
    }

    /// Clears the bar (a log needs no closing line: the report follows).
    pub fn finish(&self) {
        if let Sink::Bar(bar) = &self.0.sink {
            bar.finish_and_clear();
        }
    }
}
