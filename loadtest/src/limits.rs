//! Raising the open-file limit, so that tens of thousands of sockets can be opened without the
//! operator having to remember `ulimit -n` first.

/// Makes room for at least `wanted` open files, raising the soft limit (and the hard limit when
/// the process may, e.g. as root) as far as the system allows. Returns the limit now in force.
#[cfg(unix)]
pub fn raise_fd_limit(wanted: u64) -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let current: u64 = lim.rlim_cur;
    if current >= wanted {
        return Ok(current);
    }
    let hard: u64 = lim.rlim_max;
    if wanted > hard {
        // Only a privileged process may raise the hard limit; cap at the kernel's ceiling.
        let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(hard);
        let new_hard = wanted.min(ceiling).max(hard);
        let raised = libc::rlimit {
            rlim_cur: new_hard,
            rlim_max: new_hard,
        };
        // SAFETY: `raised` is a valid rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Ok(new_hard);
        }
    }
    let soft = wanted.min(hard);
    let raised = libc::rlimit {
        rlim_cur: soft,
        rlim_max: lim.rlim_max,
    };
    // SAFETY: `raised` is a valid rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(soft)
}

#[cfg(not(unix))]
pub fn raise_fd_limit(_wanted: u64) -> std::io::Result<u64> {
    Ok(u64::MAX)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_small_request_is_already_met() {
        let limit = super::raise_fd_limit(16).expect("getrlimit works");
        assert!(limit >= 16);
    }
}
