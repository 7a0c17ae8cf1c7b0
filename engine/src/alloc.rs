//! The node's memory allocator settings. `ternd` allocates through mimalloc, whose size-class
//! pages keep an idle connection's dozen small long-lived objects together and give back the
//! pages that a connect storm's short-lived allocations (handshake buffers, the tasks that
//! parked connections drop) leave empty. glibc's malloc leaves those as holes between
//! connections and adds a header to every object. ternbench's `idle` at 15,000 connections
//! measured 1,349-1,589 B of node memory per idle connection with glibc and 1,006-1,015 B with
//! mimalloc set up as below.

/// mimalloc's option numbers in the version [`MIMALLOC_VERSION`] (`mi_option_t` in its
/// `mimalloc.h`); `libmimalloc-sys` does not name these two.
const OPTION_ARENA_EAGER_COMMIT: i32 = 4;
const OPTION_PURGE_DELAY: i32 = 15;

/// The mimalloc version whose option numbers are above; a test fails when the linked one differs.
pub const MIMALLOC_VERSION: i32 = 30302;

/// Sets mimalloc's options for a node, unless the operator set them in the environment
/// (`MIMALLOC_ARENA_EAGER_COMMIT`, `MIMALLOC_PURGE_DELAY`). Must run before the first allocation:
/// mimalloc reads the arena option when it reserves its first arena, so `ternd` calls this from
/// an ELF constructor.
///
/// - Arenas are committed as they are used, not up front: with eager commit, memory that a purge
///   resets stays in the resident set until the kernel needs it.
/// - Pages that become empty are returned at once (the default waits a second, and only acts on
///   later allocator activity, which an idle node does not have).
pub fn tune_mimalloc() {
    if !in_environment(c"MIMALLOC_ARENA_EAGER_COMMIT") {
        set(OPTION_ARENA_EAGER_COMMIT, 0);
    }
    if !in_environment(c"MIMALLOC_PURGE_DELAY") {
        set(OPTION_PURGE_DELAY, 0);
    }
}

/// libc's getenv rather than `std::env`: this runs before the allocator is set up, and
/// `std::env::var_os` would allocate its result.
#[allow(unsafe_code)]
fn in_environment(name: &std::ffi::CStr) -> bool {
    // SAFETY: `name` is NUL-terminated; getenv only reads the environment, and nothing else
    // runs (no threads exist) while ELF constructors do.
    !unsafe { libc::getenv(name.as_ptr()) }.is_null()
}

#[allow(unsafe_code)]
fn set(option: i32, value: i64) {
    // SAFETY: mi_option_set stores an integer in mimalloc's static option table after checking
    // that `option` is in range; it allocates nothing and may run before mimalloc initialises.
    unsafe { libmimalloc_sys::mi_option_set(option, value as _) }
}

/// The linked mimalloc's version (major * 10000 + minor * 100 + patch).
#[allow(unsafe_code)]
pub fn mimalloc_version() -> i32 {
    // SAFETY: mi_version only returns a constant.
    unsafe { libmimalloc_sys::mi_version() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_numbers_belong_to_the_linked_mimalloc() {
        assert_eq!(
            mimalloc_version(),
            MIMALLOC_VERSION,
            "check OPTION_* against this mimalloc's mi_option_t before changing MIMALLOC_VERSION"
        );
    }
}
