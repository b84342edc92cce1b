//! `init` and its other names: `poweroff`, `reboot`, `halt`, `systemctl`.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

fn main() {
    let args: Vec<String> = std::env::args().collect();
    std::process::exit(minos_init::cli::main(&args));
}
