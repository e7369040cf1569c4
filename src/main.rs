//! The `ferrysync` binary: parse arguments once, run the command, map the result to an exit code.
//! Everything it does goes through the library; human formatting lives here, in [`cli`].

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
