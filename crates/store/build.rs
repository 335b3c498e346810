//! Rebuild when a migration is added or changed: `sqlx::migrate!` embeds the
//! files of `migrations/` at compile time, which cargo does not track.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
