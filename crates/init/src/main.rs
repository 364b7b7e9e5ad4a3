//! kiln's static init (PID 1 of the mini initrd). Work in progress.
fn main() {}
