//! `swpt-drainer`: see `swpt_gateway::programs::drainer`.

fn main() {
    swpt_gateway::programs::drainer::main(std::env::args_os().collect())
}
