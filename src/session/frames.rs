//! The frames of the STOMP subset, typed (SPEC section 5).
//!
//! Each frame read from the other side is parsed once, here, into what the
//! session loops dispatch on: a [`ClientFrame`] on the server side, a
//! [`ServerFrame`] on the client side, with their header checks done. The
//! frames we write are built here too, so that every protocol text of the
//! SPEC stands in one place.

use super::parse_heartbeat;
use bytes::Bytes;
use nodedata::StompManifest;
use stomp_codec::Frame;

/// A frame a server receives.
#[derive(Debug)]
pub enum ClientFrame {
    /// `CONNECT` or `STOMP`: the client's heart-beat offer, or the ERROR
    /// text its headers deserve.
    Connect(Result<(u64, u64), &'static str>),
    /// `SEND`: the message, or the ERROR text for a missing header.
    Send(Result<Send, String>),
    /// `DISCONNECT`, with the receipt it asks for.
    Disconnect { receipt: Option<String> },
    /// Any other command.
    Unexpected(String),
}

/// A `SEND` with the headers it must carry.
#[derive(Debug)]
pub struct Send {
    pub receipt: String,
    pub msg_type: String,
    pub destination: String,
    /// `application/octet-stream` when absent.
    pub content_type: String,
    pub body: Bytes,
}

impl ClientFrame {
    pub fn from_frame(frame: Frame) -> ClientFrame {
        match frame.command.as_str() {
            "CONNECT" | "STOMP" => ClientFrame::Connect(connect_offer(&frame)),
            "SEND" => ClientFrame::Send(Send::from_frame(frame)),
            "DISCONNECT" => ClientFrame::Disconnect {
                receipt: frame.get("receipt").map(str::to_string),
            },
            _ => ClientFrame::Unexpected(frame.command),
        }
    }
}

fn connect_offer(frame: &Frame) -> Result<(u64, u64), &'static str> {
    let versions = frame.get("accept-version").unwrap_or("");
    if !versions.split(',').any(|v| v == "1.2") {
        return Err(CLIENT_NOT_1_2);
    }
    parse_heartbeat(frame.get("heart-beat")).ok_or(INVALID_HEART_BEAT)
}

impl Send {
    fn from_frame(mut frame: Frame) -> Result<Send, String> {
        let take = |name: &str| {
            frame
                .get(name)
                .map(str::to_string)
                .ok_or_else(|| missing_send_header(name))
        };
        let receipt = take("receipt")?;
        let msg_type = take("type")?;
        let destination = take("destination")?;
        let content_type = frame
            .get("content-type")
            .unwrap_or("application/octet-stream")
            .to_string();
        Ok(Send {
            receipt,
            msg_type,
            destination,
            content_type,
            body: std::mem::take(&mut frame.body),
        })
    }

    /// The ERROR for this SEND: `message`, with the SEND's receipt, type,
    /// content type and body, so the client knows which message it was.
    pub fn error(&self, message: &str) -> Frame {
        error_frame(message)
            .header("receipt-id", self.receipt.clone())
            .header("type", self.msg_type.clone())
            .header("content-type", self.content_type.clone())
            .body(self.body.clone())
    }
}

/// A frame a client receives.
#[derive(Debug)]
pub enum ServerFrame {
    /// `CONNECTED`: the server's heart-beat offer, or what is wrong with it.
    Connected(Result<(u64, u64), &'static str>),
    /// `RECEIPT`, with its `receipt-id` (when present).
    Receipt(Option<String>),
    /// `ERROR`: its `message`, and the `receipt-id` of the SEND it is
    /// about, if any.
    Error {
        message: String,
        receipt_id: Option<String>,
    },
    /// Any other command.
    Unexpected(String),
}

impl ServerFrame {
    pub fn from_frame(frame: Frame) -> ServerFrame {
        match frame.command.as_str() {
            "CONNECTED" => ServerFrame::Connected(if frame.get("version") != Some("1.2") {
                Err(WRONG_VERSION)
            } else {
                parse_heartbeat(frame.get("heart-beat")).ok_or(INVALID_HEART_BEAT)
            }),
            "RECEIPT" => ServerFrame::Receipt(frame.get("receipt-id").map(str::to_string)),
            "ERROR" => ServerFrame::Error {
                message: frame.get("message").unwrap_or("").to_string(),
                receipt_id: frame.get("receipt-id").map(str::to_string),
            },
            _ => ServerFrame::Unexpected(frame.command),
        }
    }
}

// The protocol texts: the `message` of every ERROR we send, and what we
// say of a server's wrong frame (the Python gateway's words, to the letter).

pub const CLIENT_NOT_1_2: &str = "STOMP 1.2 is not supported by the client.";
pub const INVALID_HEART_BEAT: &str = "Received invalid heart-beat value.";
pub const WRONG_VERSION: &str = "Received wrong protocol version.";
pub const INTERNAL_SERVER_ERROR: &str = "Internal server error.";
/// The ERROR a session ends with on shutdown.
pub const CLOSED_BY_SERVER: &str = "The connection has been closed by the server.";
/// The ERROR a session ends with when its peer stops being active.
pub const DEACTIVATED: &str = "The peer has been deactivated.";
pub const CONNECT_NOT_IN_TIME: &str = "The CONNECT command was not received in time.";
pub const DISCONNECT_BEFORE_CONNECT: &str = "Received DISCONNECT before CONNECT.";
pub const COMMAND_BEFORE_CONNECT: &str = "Received another command before CONNECT.";
pub const COMMAND_AFTER_DISCONNECT: &str = "Received command after DISCONNECT.";
pub const CONNECT_TWICE: &str = "Received CONNECT command more than once.";
pub const CONNECTED_TWICE: &str = "Received CONNECTED command more than once.";
pub const COMMAND_BEFORE_CONNECTED: &str = "Received another command before CONNECTED.";
pub const RECEIPT_WITHOUT_ID: &str = "RECEIPT command without a receipt ID.";
pub const INVALID_SUBJECT: &str = "Invalid certificate subject.";
pub const UNKNOWN_PEER: &str = "Unknown peer serial number.";
pub const TOO_MANY_CONNECTIONS: &str = "Too many connections from one peer.";

/// A command the session does not expect (either side).
pub fn unexpected_command(command: &str) -> String {
    format!("Received unexpected command \"{command}\".")
}

/// A SEND to a destination other than ours.
pub fn invalid_destination(destination: &str) -> String {
    format!("Invalid SEND destination \"{destination}\".")
}

/// A SEND without one of the headers it must carry.
fn missing_send_header(name: &str) -> String {
    format!("SEND command without a {name} header.")
}

/// The ERROR for a client silent longer than its heart-beats allow.
pub fn silence_text(limit: std::time::Duration) -> String {
    format!("No data received for {:.3} seconds.", limit.as_secs_f64())
}

/// The server's ERROR, as the client reports it.
pub fn server_error(message: &str) -> String {
    format!("Received server error \"{message}\".")
}

/// `ERROR` with `message`.
pub fn error_frame(message: &str) -> Frame {
    Frame::new("ERROR").header("message", message)
}

/// `RECEIPT` for `receipt_id`.
pub fn receipt_frame(receipt_id: &str) -> Frame {
    Frame::new("RECEIPT").header("receipt-id", receipt_id)
}

/// The server's `CONNECTED`, offering `heart_beat`.
pub fn connected_frame(heart_beat: String) -> Frame {
    Frame::new("CONNECTED")
        .header("version", "1.2")
        .header("heart-beat", heart_beat)
}

/// The client's opening `STOMP` frame for a peer's manifest.
pub fn stomp_frame(manifest: &StompManifest, heart_beat: String) -> Frame {
    let mut stomp = Frame::new("STOMP")
        .header("accept-version", "1.2")
        .header("host", manifest.host.clone())
        .header("heart-beat", heart_beat);
    if let Some(login) = &manifest.login {
        stomp = stomp.header("login", login.clone());
    }
    if let Some(passcode) = &manifest.passcode {
        stomp = stomp.header("passcode", passcode.clone());
    }
    stomp
}

/// The client's `SEND` of one message.
pub fn send_frame(destination: &str, msg_type: &str, receipt: u64, body: Vec<u8>) -> Frame {
    Frame::new("SEND")
        .header("destination", destination)
        .header("type", msg_type)
        .header("content-type", "application/json")
        .header("persistent", "true")
        .header("receipt", receipt.to_string())
        .body(body)
}

/// The client's `DISCONNECT`, asking for a receipt.
pub fn disconnect_frame(receipt: u64) -> Frame {
    Frame::new("DISCONNECT").header("receipt", receipt.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_headers_are_checked_in_order() {
        let full = Frame::new("SEND")
            .header("receipt", "7")
            .header("type", "AccountPurge")
            .header("destination", "/exchange/accounts_in")
            .body("{}");
        let ClientFrame::Send(Ok(send)) = ClientFrame::from_frame(full.clone()) else {
            panic!("a full SEND is accepted")
        };
        assert_eq!(send.content_type, "application/octet-stream");
        assert_eq!(send.error("x").get("receipt-id"), Some("7"));
        let mut no_type = full.clone();
        no_type.headers.retain(|(n, _)| n != "type" && n != "destination");
        match ClientFrame::from_frame(no_type) {
            ClientFrame::Send(Err(e)) => assert_eq!(e, "SEND command without a type header."),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn connect_and_connected_checks() {
        let connect = |v: &str, hb: &str| {
            let f = Frame::new("STOMP")
                .header("accept-version", v)
                .header("heart-beat", hb);
            match ClientFrame::from_frame(f) {
                ClientFrame::Connect(r) => r,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(connect("1.1,1.2", "0,0"), Ok((0, 0)));
        assert_eq!(
            connect("1.1", "0,0"),
            Err("STOMP 1.2 is not supported by the client.")
        );
        assert_eq!(connect("1.2", "x"), Err("Received invalid heart-beat value."));
        let connected = Frame::new("CONNECTED").header("version", "1.1");
        assert!(matches!(
            ServerFrame::from_frame(connected),
            ServerFrame::Connected(Err("Received wrong protocol version."))
        ));
        assert!(matches!(
            ClientFrame::from_frame(Frame::new("SUBSCRIBE")),
            ClientFrame::Unexpected(c) if c == "SUBSCRIBE"
        ));
    }
}
