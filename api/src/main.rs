// jemalloc rather than glibc malloc: under the send workload glibc's per-thread arenas
// kept freed message buffers, and the server's RSS was about three times its live heap
// (BENCHMARKS.md, "Memory").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    api::cli::main()
}
