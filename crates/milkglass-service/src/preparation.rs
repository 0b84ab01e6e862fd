//! Background preparation of new dataset versions.
//!
//! An upload makes a new version, and that version's first requests would wait for its
//! counts, filter index, map, similarity index and SQL tables. They are made here instead,
//! ahead of those requests, under three rules that keep the work from taking the server
//! away from the people using it:
//!
//! - **Coalesced.** A dataset waits in the queue at most once, and a job always prepares
//!   the version that is current when it *starts*, so a burst of uploads costs one or two
//!   preparations of the newest version, not one per upload.
//! - **Bounded.** A fixed number of workers (one by default); one dataset is prepared by
//!   at most one of them at a time.
//! - **Below requests.** The workers, and the index builds they start, run at a lower
//!   scheduling priority ([`lower_priority`]), so that they use the cores requests leave
//!   idle and a query never waits behind them for a core.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// A dataset by its names: what a job looks up afresh when it starts.
pub(crate) type DatasetKey = (String, String);

/// The preparation of one dataset's newest version; errors are the job's own to log.
pub(crate) type Job = dyn Fn(&DatasetKey) + Send + Sync;

/// Where a dataset stands in the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Warming {
    /// Nothing waits or runs for it.
    Idle,
    /// It waits for a worker.
    Queued,
    /// A worker prepares it now (and it may wait again behind that, for a newer version).
    Running,
}

/// The queue and its workers; dropping it stops the workers after their current job.
pub(crate) struct Preparer {
    shared: Arc<Shared>,
}

struct Shared {
    queue: Mutex<Queue>,
    changed: Condvar,
}

#[derive(Default)]
struct Queue {
    /// Datasets waiting, oldest request first; each at most once.
    waiting: VecDeque<DatasetKey>,
    running: HashSet<DatasetKey>,
    closed: bool,
}

impl Preparer {
    /// Starts `workers` threads (at least one) that run `job` for each dataset asked for.
    pub(crate) fn start(workers: usize, job: Arc<Job>) -> std::io::Result<Preparer> {
        let shared = Arc::new(Shared { queue: Mutex::default(), changed: Condvar::new() });
        for n in 0..workers.max(1) {
            let (shared, job) = (shared.clone(), job.clone());
            std::thread::Builder::new().name(format!("milkglass-prepare-{n}")).spawn(move || {
                lower_priority();
                while let Some(key) = shared.next() {
                    job(&key);
                    shared.done(&key);
                }
            })?;
        }
        Ok(Preparer { shared })
    }

    /// Asks for the dataset's newest version to be prepared; nothing more when it waits already.
    pub(crate) fn request(&self, project: &str, dataset: &str) {
        let key = (project.to_string(), dataset.to_string());
        let mut queue = self.shared.lock();
        if !queue.waiting.contains(&key) {
            queue.waiting.push_back(key);
            self.shared.changed.notify_all();
        }
    }

    pub(crate) fn state(&self, project: &str, dataset: &str) -> Warming {
        let key = (project.to_string(), dataset.to_string());
        let queue = self.shared.lock();
        if queue.running.contains(&key) {
            Warming::Running
        } else if queue.waiting.contains(&key) {
            Warming::Queued
        } else {
            Warming::Idle
        }
    }
}

impl Drop for Preparer {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.changed.notify_all();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The oldest waiting dataset no other worker prepares now, marked running; None once closed.
    fn next(&self) -> Option<DatasetKey> {
        let mut queue = self.lock();
        loop {
            if queue.closed {
                return None;
            }
            if let Some(at) = queue.waiting.iter().position(|key| !queue.running.contains(key)) {
                let key = queue.waiting.remove(at).expect("a position just found");
                queue.running.insert(key.clone());
                return Some(key);
            }
            queue = self.changed.wait(queue).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn done(&self, key: &DatasetKey) {
        self.lock().running.remove(key);
        // A request for the same dataset may have waited behind this job.
        self.changed.notify_all();
    }
}

/// Lowers the calling thread's scheduling priority (nice 10), and with it that of the
/// threads it starts, which inherit it. Linux gives each thread a nice value of its own;
/// elsewhere this does nothing. Failure only leaves the priority as it was.
pub(crate) fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority reads only its integer arguments; `0` names the calling thread.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 10);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    /// A job that reports each start and then waits until the test lets it finish.
    fn gated() -> (Arc<Job>, mpsc::Receiver<DatasetKey>, mpsc::SyncSender<()>) {
        let (started, starts) = mpsc::channel();
        let (release, released) = mpsc::sync_channel::<()>(0);
        let (started, released) = (Mutex::new(started), Mutex::new(released));
        let job: Arc<Job> = Arc::new(move |key: &DatasetKey| {
            started.lock().unwrap().send(key.clone()).unwrap();
            released.lock().unwrap().recv().unwrap();
        });
        (job, starts, release)
    }

    const WAIT: Duration = Duration::from_secs(10);

    #[test]
    fn a_burst_of_requests_for_one_dataset_runs_at_most_twice() {
        let (job, starts, release) = gated();
        let preparer = Preparer::start(2, job).unwrap();
        preparer.request("p", "d");
        assert_eq!(starts.recv_timeout(WAIT).unwrap(), ("p".into(), "d".into()));
        assert_eq!(preparer.state("p", "d"), Warming::Running);
        // Ten uploads land while the first preparation runs: they wait as one request, and
        // the second worker does not start the same dataset beside the first.
        for _ in 0..10 {
            preparer.request("p", "d");
        }
        assert_eq!(preparer.state("p", "d"), Warming::Running);
        assert!(starts.recv_timeout(Duration::from_millis(300)).is_err(), "one dataset ran twice at once");
        release.send(()).unwrap();
        assert_eq!(starts.recv_timeout(WAIT).unwrap(), ("p".into(), "d".into()));
        release.send(()).unwrap();
        assert!(starts.recv_timeout(Duration::from_millis(300)).is_err(), "more runs than the burst needs");
        let waited = std::time::Instant::now();
        while preparer.state("p", "d") != Warming::Idle {
            assert!(waited.elapsed() < WAIT, "still {:?}", preparer.state("p", "d"));
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn workers_are_bounded_and_share_out_datasets() {
        let (job, starts, release) = gated();
        let preparer = Preparer::start(1, job).unwrap();
        for name in ["a", "b", "c"] {
            preparer.request("p", name);
        }
        assert_eq!(starts.recv_timeout(WAIT).unwrap().1, "a");
        assert_eq!(preparer.state("p", "b"), Warming::Queued);
        assert!(starts.recv_timeout(Duration::from_millis(300)).is_err(), "a second worker ran");
        release.send(()).unwrap();
        assert_eq!(starts.recv_timeout(WAIT).unwrap().1, "b");
        release.send(()).unwrap();
        assert_eq!(starts.recv_timeout(WAIT).unwrap().1, "c");
        release.send(()).unwrap();
    }

    #[test]
    fn dropping_the_preparer_stops_its_workers() {
        let (job, starts, release) = gated();
        let preparer = Preparer::start(1, job).unwrap();
        preparer.request("p", "a");
        starts.recv_timeout(WAIT).unwrap();
        preparer.request("p", "b");
        drop(preparer);
        release.send(()).unwrap();
        assert!(starts.recv_timeout(Duration::from_millis(300)).is_err(), "a job started after the drop");
    }
}
