//! amqp-bridge
