//! The allocator of the `spore` binary (mimalloc), for the benches that measure the write path
//! as `spore node` runs it. `RUSTFLAGS="--cfg spores_system_alloc"` keeps the system allocator
//! (glibc's malloc), for an A/B of the two: an embedder that sets none runs on that one.

#[cfg(not(spores_system_alloc))]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
