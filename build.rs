//! `refinery::embed_migrations!` reads `migrations/` when `src/db.rs` is compiled, but cargo does
//! not know that: without this, a new `V<N>__*.sql` is silently left out of an incremental build.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
