//! Progress of an evaluation on stderr, counted in prompt runs (one prompt through the model
//! once: the reference prompts, then every prompt for the full model, the empty circuit and each
//! circuit). A bar with an ETA on a terminal; otherwise one plain line every few seconds, for the
//! logs of batch jobs; nothing with `--quiet`.

use std::cell::Cell;
use std::io::IsTerminal;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
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

/// The interval between two log lines off a terminal.
fn log_every() -> Duration {
    let seconds = std::env::var("CIRCUIT_PROGRESS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(LOG_EVERY_SECONDS);
    Duration::from_secs(seconds)
}

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
            Sink::Log {
                every: log_every(),
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
        let what = format!("evaluating {}", state.what);
        counted_line(
            &what,
            state.done.get(),
            state.total.get(),
            "prompt runs",
            state.start,
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

/// `WHAT: 120/480 UNIT (25%), 10s elapsed, about 30s left`.
fn counted_line(what: &str, done: u64, total: u64, unit: &str, start: Instant) -> String {
    let total = total.max(done);
    let elapsed = start.elapsed().as_secs_f64();
    let left = if done > 0 {
        elapsed * (total - done) as f64 / done as f64
    } else {
        0.0
    };
    let percent = (100 * done).checked_div(total).unwrap_or(0);
    format!(
        "{what}: {done}/{total} {unit} ({percent}%), {elapsed:.0}s elapsed, about {left:.0}s left"
    )
}

/// Progress of `circuit scores`, counted in gradient passes (a few prompts through the forward
/// and the backward once; `m` per few prompts under eap-ig), as the bar or log lines of
/// [`Progress`]. Shareable across threads: attribution reports its passes from inside.
pub struct PassProgress {
    what: String,
    bar: Option<indicatif::ProgressBar>,
    /// Off a terminal: the interval between log lines and when the last was printed.
    log: Option<(Duration, Mutex<Instant>)>,
    start: Instant,
}

impl PassProgress {
    /// Progress of scoring `what` (a file name), shown as stderr and `--quiet` allow.
    pub fn start(what: &str) -> PassProgress {
        let what = format!("scoring {what}");
        let (mut bar, mut log) = (None, None);
        if QUIET.load(Ordering::Relaxed) {
        } else if std::io::stderr().is_terminal() {
            // Until the first count: the reference, full and empty runs, whose length the
            // passes' total does not include.
            let b = indicatif::ProgressBar::new_spinner();
            b.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {msg}, {elapsed} elapsed")
                    .expect("a valid template"),
            );
            b.set_message(format!("{what}: the reference, full and empty runs"));
            b.enable_steady_tick(Duration::from_millis(200));
            bar = Some(b);
        } else {
            log = Some((log_every(), Mutex::new(Instant::now())));
        }
        PassProgress {
            what,
            bar,
            log,
            start: Instant::now(),
        }
    }

    /// Whether anything is shown (else attribution need not report its passes).
    pub fn shown(&self) -> bool {
        self.bar.is_some() || self.log.is_some()
    }

    /// `done` of `total` gradient passes are done (`done = 0`: the passes start).
    pub fn pass(&self, done: usize, total: usize) {
        if let Some(bar) = &self.bar {
            if bar.length() != Some(total as u64) {
                bar.set_length(total as u64);
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{spinner} {msg} [{bar:30}] {pos}/{len} gradient passes, {elapsed} elapsed, about {eta} left",
                    )
                    .expect("a valid template")
                    .progress_chars("=> "),
                );
                bar.set_message(self.what.clone());
            }
            bar.set_position(done as u64);
        }
        // Off a terminal, a line says what has been done (none yet is no news).
        if let Some((every, last)) = self.log.as_ref().filter(|_| done > 0) {
            let mut last = last.lock().expect("no progress thread panicked");
            if last.elapsed() >= *every {
                *last = Instant::now();
                let line = counted_line(
                    &self.what,
                    done as u64,
                    total as u64,
                    "gradient passes",
                    self.start,
                );
                eprintln!("{line}");
            }
        }
    }

    /// Clears the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
