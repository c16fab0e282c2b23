//! Open files: how many connections fit the process's open-files limit.
//!
//! Every connection is a file descriptor. A limit lower than the connections the
//! listeners allow (soft limits of 1,024 are common) would let `accept` fail with
//! EMFILE under load: new clients would wait unanswered and the admin port would
//! stop answering. So at startup, as Redis does, the soft limit is raised to the
//! hard one, and the listeners' connection limits are lowered to what fits, with
//! a warning that says so.

use std::time::Duration;

/// Descriptors kept for what is not a client connection: listeners, the
/// runtime's epoll and event descriptors, standard streams, files.
const RESERVED: u64 = 64;

/// The open-files limit, after raising the soft limit to the hard one.
fn raise_limit() -> Option<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit` writes the limit into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: `setrlimit` reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = limit.rlim_max;
        }
    }
    Some((before, limit.rlim_cur))
}

/// The connection limits that fit the open-files limit: `wanted` (one per
/// listener) lowered, each in proportion, when together with `others` (backend
/// connections, refused connections being closed) they would not fit. That is
/// warned about when the user `asked` for `wanted`; the defaults fit
/// silently (said at debug level).
pub(crate) fn fit_connections(wanted: &[usize], others: usize, asked: bool) -> Vec<usize> {
    let Some((before, limit)) = raise_limit() else {
        return wanted.to_vec();
    };
    let budget = limit.saturating_sub(RESERVED + others as u64);
    let total: u64 = wanted
        .iter()
        .map(|&n| n as u64)
        .fold(0, u64::saturating_add);
    if total <= budget {
        if before < limit {
            tracing::info!(from = before, to = limit, "raised the open-files limit");
        }
        return wanted.to_vec();
    }
    let fitted: Vec<usize> = wanted
        .iter()
        .map(|&n| (n as u128 * u128::from(budget) / u128::from(total.max(1))) as usize)
        .map(|n| n.max(1))
        .collect();
    if asked {
        tracing::warn!(
            open_files_limit = limit,
            wanted = ?wanted,
            fitted = ?fitted,
            "the open-files limit is too low for --max-connections; the listeners take fewer connections (raise `ulimit -n` to allow more)"
        );
    } else {
        tracing::debug!(open_files_limit = limit, fitted = ?fitted, "connection limits fitted to the open-files limit");
    }
    fitted
}

/// Descriptors kept spare for refusing clients when the process has none
/// left: each is given up to accept one client, which is told it is refused
/// and closed at once, and taken back. Two, so that one lost to another
/// thread's socket between giving it up and taking it back still leaves one.
const SPARES: usize = 2;

/// The spare descriptors, and the state of an episode of running out.
struct Spares {
    files: Vec<std::fs::File>,
    /// Refusals since the process ran out; `None` while it has descriptors.
    episode: Option<u64>,
}

static SPARE: std::sync::Mutex<Spares> = std::sync::Mutex::new(Spares {
    files: Vec::new(),
    episode: None,
});

fn spares() -> std::sync::MutexGuard<'static, Spares> {
    SPARE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Opens the spare descriptors that are missing.
pub(crate) fn keep_spares() {
    let mut spares = spares();
    while spares.files.len() < SPARES {
        match std::fs::File::open("/dev/null") {
            Ok(file) => spares.files.push(file),
            Err(_) => break,
        }
    }
}

/// The process is out of descriptors and `listener` has clients waiting:
/// refuses each one waiting with `refusal`, a spare descriptor at a time, all
/// under one lock so that no other listener takes the descriptor freed for
/// it. Returns how many were refused (0: no spare to give up). The first
/// time of an episode is logged; the end of it is logged by
/// [`descriptors_available`].
pub(crate) fn refuse_waiting(listener: &tokio::net::TcpListener, refusal: &[u8]) -> usize {
    let mut spares = spares();
    if spares.episode.is_none() {
        tracing::warn!(
            "out of file descriptors: refusing new connections until some are free (raise `ulimit -n` to allow more)"
        );
        spares.episode = Some(0);
        RUNNING_OUT.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let socket = socket2::SockRef::from(listener);
    let mut refused = 0;
    while let Some(spare) = spares.files.pop() {
        drop(spare);
        let accepted = socket.accept();
        // Taken back at once, before anything else can open a descriptor.
        if let Ok(file) = std::fs::File::open("/dev/null") {
            spares.files.push(file);
        }
        match accepted {
            Ok((client, _)) => {
                refuse(&client, refusal);
                refused += 1;
            }
            Err(_) => break,
        }
    }
    if let Some(count) = &mut spares.episode {
        *count += refused as u64;
    }
    drop(spares);
    keep_spares();
    refused
}

/// How long a refused client's first bytes are waited for before its socket
/// is closed.
const REFUSAL_DRAIN: Duration = Duration::from_millis(10);

/// Sends `refusal` and closes, reading what the client sent first (waiting
/// [`REFUSAL_DRAIN`] at most for its first request to arrive): a socket
/// closed with unread input is reset, and a reset can lose the refusal on
/// its way. A client whose request comes later still may see the reset
/// instead: an answer at once all the same.
fn refuse(client: &socket2::Socket, refusal: &[u8]) {
    let _ = client.set_nonblocking(false);
    let _ = client.set_write_timeout(Some(REFUSAL_DRAIN));
    let _ = client.send(refusal);
    let _ = client.shutdown(std::net::Shutdown::Write);
    let _ = client.set_read_timeout(Some(REFUSAL_DRAIN));
    let mut sink = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
    while matches!(client.recv(&mut sink), Ok(n) if n > 0) {}
}

/// A connection was accepted: descriptors are available again; the end of
/// an episode of running out is logged with what it refused.
pub(crate) fn descriptors_available() {
    // One load on the common path; the lock only after an episode.
    if !RUNNING_OUT.swap(false, std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    if let Some(refused) = spares().episode.take() {
        tracing::info!(refused, "file descriptors available again");
    }
}

/// Set while an episode of running out of descriptors lasts.
static RUNNING_OUT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_that_fit_are_kept() {
        assert_eq!(fit_connections(&[10, 10, 5], 16, true), [10, 10, 5]);
    }

    #[test]
    fn limits_that_do_not_fit_are_lowered_in_proportion() {
        let (_, limit) = raise_limit().unwrap();
        let fitted = fit_connections(&[usize::MAX / 4, usize::MAX / 4, 64], 16, true);
        let total: u64 = fitted.iter().map(|&n| n as u64).sum();
        assert!(total <= limit, "{fitted:?} against {limit}");
        assert_eq!(fitted[0], fitted[1]);
    }
}
