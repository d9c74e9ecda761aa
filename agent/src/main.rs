//! `meshanics-agent`: the device agent's command line. See the library crate for the tour.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
