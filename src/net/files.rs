//! Open files: how many connections fit the process's open-files limit.
//!
//! Every connection is a file descriptor. A limit lower than the connections the
//! listeners allow (soft limits of 1,024 are common) would let `accept` fail with
//! EMFILE under load: new clients would wait unanswered and the admin port would
//! stop answering. So at startup, as Redis does, the soft limit is raised to the
//! hard one, and the listeners' connection limits are lowered to what fits, with
//! a warning that says so.

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
/// connections, refused connections being closed) they would not fit.
pub(crate) fn fit_connections(wanted: &[usize], others: usize) -> Vec<usize> {
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
    tracing::warn!(
        open_files_limit = limit,
        wanted = ?wanted,
        fitted = ?fitted,
        "the open-files limit is too low for --max-connections; the listeners take fewer connections (raise `ulimit -n` to allow more)"
    );
    fitted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_that_fit_are_kept() {
        assert_eq!(fit_connections(&[10, 10, 5], 16), [10, 10, 5]);
    }

    #[test]
    fn limits_that_do_not_fit_are_lowered_in_proportion() {
        let (_, limit) = raise_limit().unwrap();
        let fitted = fit_connections(&[usize::MAX / 4, usize::MAX / 4, 64], 16);
        let total: u64 = fitted.iter().map(|&n| n as u64).sum();
        assert!(total <= limit, "{fitted:?} against {limit}");
        assert_eq!(fitted[0], fitted[1]);
    }
}
