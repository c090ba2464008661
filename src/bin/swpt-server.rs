//! `swpt-server`: see `swpt_gateway::programs::server`.

fn main() {
    swpt_gateway::programs::server::main(std::env::args_os().collect())
}
