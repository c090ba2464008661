//! `configure-queue`: see `swpt_gateway::programs::configure_queue`.

fn main() {
    swpt_gateway::programs::configure_queue::main(std::env::args_os().collect())
}
