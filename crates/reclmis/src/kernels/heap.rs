//! How the process heap hands out the large buffers of the CPU path.
//!
//! A training step at 224 px allocates and frees hundreds of activation and gradient buffers of
//! 1–50 MB. With glibc's defaults every allocation above its mmap threshold (at most 32 MiB, and
//! the smaller ones once it has adapted) is a fresh `mmap`, and freeing it returns the pages to
//! the kernel, so the next step takes a page fault and has a zeroed page written for every 4 KiB
//! it touches again: `perf` put about 5 % of a training step's samples in the kernel's page-fault and
//! page-clearing paths. [`keep_freed_memory`] makes glibc serve large blocks from its heap and
//! keep freed memory for reuse; the peak resident memory of `reclmis bench` stayed the same
//! (the peak is reached within one step either way) while the training step got about 10 %
//! faster (`bench/results`, issue 13's records).

/// Tells glibc's `malloc` never to use `mmap` for large blocks and never to trim the heap, so
/// memory freed by one step is reused by the next without page faults. Does nothing where the
/// user set glibc's malloc tunables themselves (`GLIBC_TUNABLES` naming `glibc.malloc`), and on
/// other C libraries. Returns whether it changed the settings.
///
/// Call it once at the start of a program, before threads allocate (the command-line tool does).
/// It changes the heap of the whole process, so a library embedding reclmis (the Python module)
/// leaves that choice to its host.
pub fn keep_freed_memory() -> bool {
    let user_set = std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc"));
    !user_set && set_glibc_options()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_glibc_options() -> bool {
    // SAFETY: mallopt only changes allocator parameters; both are documented options and any
    // value is valid for them.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX) == 1
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_glibc_options() -> bool {
    false
}
