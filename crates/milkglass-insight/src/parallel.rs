//! A small work-sharing helper: the crate avoids a thread-pool dependency, and its jobs
//! (queries, graph rows, gradient passes) are all "run f on every index".

use std::sync::atomic::{AtomicUsize, Ordering};

/// Number of threads meaning "all cores" when 0.
pub fn thread_count(requested: usize) -> usize {
    if requested == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { requested }
}

/// `f(i)` for every `i < count`, spread over `threads` threads in chunks, results in order.
/// `progress(done, count)` is called from worker threads as chunks finish.
pub fn map_indexed<T: Send>(
    count: usize,
    threads: usize,
    chunk: usize,
    progress: Option<&(dyn Fn(usize, usize) + Sync)>,
    f: impl Fn(usize) -> T + Sync,
) -> Vec<T> {
    let threads = thread_count(threads).min(count.div_ceil(chunk.max(1))).max(1);
    let chunk = chunk.max(1);
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let work = || {
        let mut out: Vec<(usize, Vec<T>)> = Vec::new();
        loop {
            let start = next.fetch_add(chunk, Ordering::Relaxed);
            if start >= count {
                return out;
            }
            let end = (start + chunk).min(count);
            out.push((start, (start..end).map(&f).collect()));
            let finished = done.fetch_add(end - start, Ordering::Relaxed) + end - start;
            if let Some(progress) = progress {
                progress(finished, count);
            }
        }
    };
    let mut pieces: Vec<(usize, Vec<T>)> = if threads == 1 {
        work()
    } else {
        std::thread::scope(|scope| {
            let workers: Vec<_> = (1..threads).map(|_| scope.spawn(work)).collect();
            let mut all = work();
            for worker in workers {
                all.extend(worker.join().expect("worker thread panicked"));
            }
            all
        })
    };
    pieces.sort_by_key(|(start, _)| *start);
    pieces.into_iter().flat_map(|(_, values)| values).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn results_keep_their_order_whatever_the_threads() {
        for threads in [1, 2, 3] {
            let squares = super::map_indexed(1000, threads, 7, None, |i| i * i);
            assert_eq!(squares, (0..1000).map(|i| i * i).collect::<Vec<_>>());
        }
        assert!(super::map_indexed(0, 2, 8, None, |i| i).is_empty());
    }
}
