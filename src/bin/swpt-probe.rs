//! `swpt-probe`: see `swpt_gateway::programs::probe`.

fn main() {
    swpt_gateway::programs::probe::main(std::env::args_os().collect())
}
