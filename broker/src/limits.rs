//! Process limits a node sets at start. Open files: every replica holds a few descriptors
//! (its active segment, its indexes), so a broker with thousands of replicas needs far more
//! than the usual soft limit of 1,024. The node asks for the hard limit, as Kafka's
//! packaging does with `ulimit -n`, and says what it got.

/// The soft limit to ask for: the hard limit when it is higher than the soft one.
pub(crate) fn wanted_open_files(soft: u64, hard: u64) -> Option<u64> {
    (hard > soft).then_some(hard)
}

/// The open-files limit before and after [`raise_open_files`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OpenFiles {
    pub(crate) before: u64,
    pub(crate) now: u64,
    pub(crate) hard: u64,
}

fn get() -> std::io::Result<libc::rlimit> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r)
}

/// Raises this process's soft open-files limit to its hard limit.
pub(crate) fn raise_open_files() -> std::io::Result<OpenFiles> {
    let r = get()?;
    let (before, hard) = (r.rlim_cur as u64, r.rlim_max as u64);
    if let Some(want) = wanted_open_files(before, hard) {
        let new = libc::rlimit {
            rlim_cur: want as libc::rlim_t,
            rlim_max: r.rlim_max,
        };
        // SAFETY: setrlimit reads one rlimit from a struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(OpenFiles {
        before,
        now: get()?.rlim_cur as u64,
        hard,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asks_for_the_hard_limit_only_when_it_is_higher() {
        for (soft, hard, want) in [
            (1024, 524_288, Some(524_288)),
            (20_000, 20_000, None),
            (4096, u64::MAX, Some(u64::MAX)),
        ] {
            assert_eq!(wanted_open_files(soft, hard), want, "{soft} {hard}");
        }
    }

    #[test]
    fn raising_leaves_the_soft_limit_at_the_hard_limit() {
        let got = raise_open_files().unwrap();
        assert_eq!(got.now, got.hard);
        assert!(got.before <= got.now);
        assert_eq!(
            raise_open_files().unwrap().before,
            got.hard,
            "a second call finds it raised"
        );
    }
}
