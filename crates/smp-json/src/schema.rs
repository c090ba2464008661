//! The SMP message types ([`MessageType::ALL`]) and their validation (SPEC
//! section 6).
//!
//! Each type is a table of fields with a kind; [`Message::parse`] checks a
//! JSON body against its table and the type's cross-field rules, drops
//! unknown fields and normalizes timestamps. The result keeps the fields
//! as JSON values, with the IDs the processing rules need at hand.

use crate::timestamp::{parse_date, Timestamp};
use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::Value;
use std::borrow::Cow;

/// The SMP message types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageType {
    ConfigureAccount,
    RejectedConfig,
    PrepareTransfer,
    FinalizeTransfer,
    RejectedTransfer,
    PreparedTransfer,
    FinalizedTransfer,
    AccountUpdate,
    AccountPurge,
    AccountTransfer,
}

impl MessageType {
    pub const ALL: [MessageType; 10] = [
        MessageType::ConfigureAccount,
        MessageType::RejectedConfig,
        MessageType::PrepareTransfer,
        MessageType::FinalizeTransfer,
        MessageType::RejectedTransfer,
        MessageType::PreparedTransfer,
        MessageType::FinalizedTransfer,
        MessageType::AccountUpdate,
        MessageType::AccountPurge,
        MessageType::AccountTransfer,
    ];

    pub fn parse(s: &str) -> Option<MessageType> {
        MessageType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::ConfigureAccount => "ConfigureAccount",
            MessageType::RejectedConfig => "RejectedConfig",
            MessageType::PrepareTransfer => "PrepareTransfer",
            MessageType::FinalizeTransfer => "FinalizeTransfer",
            MessageType::RejectedTransfer => "RejectedTransfer",
            MessageType::PreparedTransfer => "PreparedTransfer",
            MessageType::FinalizedTransfer => "FinalizedTransfer",
            MessageType::AccountUpdate => "AccountUpdate",
            MessageType::AccountPurge => "AccountPurge",
            MessageType::AccountTransfer => "AccountTransfer",
        }
    }

    /// *In* types are sent to an accounting authority.
    pub fn is_in(self) -> bool {
        matches!(
            self,
            MessageType::ConfigureAccount | MessageType::PrepareTransfer | MessageType::FinalizeTransfer
        )
    }
}

/// The kind of a field and its limits.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// A JSON integer in `min..=max`.
    Int(i64, i64),
    /// A nonzero i64.
    NonZero,
    /// A JSON number in `min..=max`.
    Float(f64, f64),
    /// A string of `min..=max` characters, ASCII only when `ascii`.
    Str {
        min: usize,
        max: usize,
        ascii: bool,
    },
    /// A string of at most `max` UTF-8 octets.
    Bytes(usize),
    /// An ASCII status code of at most 30 characters (any but `OK` when
    /// `not_ok`).
    Status {
        not_ok: bool,
    },
    Timestamp,
    Date,
    /// `^[0-9A-Za-z.-]{0,8}$`
    NoteFormat,
    /// `^([0-9A-F]{64}|[0-9a-f]{64})?$`
    Sha256,
}

const I64: Kind = Kind::Int(i64::MIN, i64::MAX);
const I32: Kind = Kind::Int(i32::MIN as i64, i32::MAX as i64);
const U63: Kind = Kind::Int(0, i64::MAX);
const U31: Kind = Kind::Int(0, i32::MAX as i64);
const NON_NEGATIVE: Kind = Kind::Float(0.0, f64::INFINITY);
const DEMURRAGE: Kind = Kind::Float(-100.0, 0.0);
const ASCII_100: Kind = Kind::Str {
    min: 0,
    max: 100,
    ascii: true,
};
const COORDINATOR_TYPE: Kind = Kind::Str {
    min: 1,
    max: 30,
    ascii: true,
};

type Fields = &'static [(&'static str, Kind)];

const COMMON: Fields = &[("debtor_id", I64), ("creditor_id", I64)];
const COORDINATOR: Fields = &[
    ("coordinator_type", COORDINATOR_TYPE),
    ("coordinator_id", I64),
    ("coordinator_request_id", I64),
];
const NOTE: Fields = &[
    ("transfer_note_format", Kind::NoteFormat),
    ("transfer_note", Kind::Bytes(500)),
];

fn own_fields(t: MessageType) -> Fields {
    use MessageType::*;
    match t {
        ConfigureAccount => &[
            ("negligible_amount", NON_NEGATIVE),
            ("config_data", Kind::Bytes(2000)),
            ("config_flags", I32),
            ("seqnum", I32),
            ("ts", Kind::Timestamp),
        ],
        RejectedConfig => &[
            ("config_ts", Kind::Timestamp),
            ("config_seqnum", I32),
            ("config_flags", I32),
            ("config_data", Kind::Bytes(2000)),
            ("negligible_amount", NON_NEGATIVE),
            ("rejection_code", Kind::Status { not_ok: false }),
            ("ts", Kind::Timestamp),
        ],
        PrepareTransfer => &[
            ("min_locked_amount", U63),
            ("max_locked_amount", U63),
            ("recipient", ASCII_100),
            ("final_interest_rate_ts", Kind::Timestamp),
            ("max_commit_delay", U31),
            ("ts", Kind::Timestamp),
        ],
        FinalizeTransfer => &[
            ("transfer_id", I64),
            ("committed_amount", U63),
            ("ts", Kind::Timestamp),
        ],
        RejectedTransfer => &[
            ("status_code", Kind::Status { not_ok: true }),
            ("total_locked_amount", U63),
            ("ts", Kind::Timestamp),
        ],
        PreparedTransfer => &[
            ("transfer_id", I64),
            ("locked_amount", U63),
            ("recipient", ASCII_100),
            ("prepared_at", Kind::Timestamp),
            ("demurrage_rate", DEMURRAGE),
            ("deadline", Kind::Timestamp),
            ("final_interest_rate_ts", Kind::Timestamp),
            ("ts", Kind::Timestamp),
        ],
        FinalizedTransfer => &[
            ("transfer_id", I64),
            ("committed_amount", U63),
            ("status_code", Kind::Status { not_ok: false }),
            ("total_locked_amount", U63),
            ("prepared_at", Kind::Timestamp),
            ("ts", Kind::Timestamp),
        ],
        AccountUpdate => &[
            ("creation_date", Kind::Date),
            ("last_change_ts", Kind::Timestamp),
            ("last_change_seqnum", I32),
            ("principal", I64),
            ("interest", Kind::Float(f64::NEG_INFINITY, f64::INFINITY)),
            ("interest_rate", Kind::Float(-100.0, f64::INFINITY)),
            ("last_interest_rate_change_ts", Kind::Timestamp),
            ("last_config_ts", Kind::Timestamp),
            ("last_config_seqnum", I32),
            ("negligible_amount", NON_NEGATIVE),
            ("config_flags", I32),
            ("config_data", Kind::Bytes(2000)),
            ("account_id", ASCII_100),
            (
                "debtor_info_iri",
                Kind::Str {
                    min: 0,
                    max: 200,
                    ascii: false,
                },
            ),
            ("debtor_info_content_type", ASCII_100),
            ("debtor_info_sha256", Kind::Sha256),
            ("last_transfer_number", U63),
            ("last_transfer_committed_at", Kind::Timestamp),
            ("demurrage_rate", DEMURRAGE),
            ("commit_period", U31),
            ("transfer_note_max_bytes", Kind::Int(0, 500)),
            ("ts", Kind::Timestamp),
            ("ttl", U31),
        ],
        AccountPurge => &[("creation_date", Kind::Date), ("ts", Kind::Timestamp)],
        AccountTransfer => &[
            ("coordinator_type", COORDINATOR_TYPE),
            ("creation_date", Kind::Date),
            ("transfer_number", Kind::Int(1, i64::MAX)),
            ("sender", ASCII_100),
            ("recipient", ASCII_100),
            ("acquired_amount", Kind::NonZero),
            ("committed_at", Kind::Timestamp),
            ("principal", I64),
            ("ts", Kind::Timestamp),
            ("previous_transfer_number", U63),
        ],
    }
}

fn field_groups(t: MessageType) -> [Fields; 4] {
    use MessageType::*;
    let coordinator: Fields = match t {
        PrepareTransfer | FinalizeTransfer | RejectedTransfer | PreparedTransfer | FinalizedTransfer => {
            COORDINATOR
        }
        _ => &[],
    };
    let note: Fields = match t {
        FinalizeTransfer | AccountTransfer => NOTE,
        _ => &[],
    };
    [COMMON, coordinator, note, own_fields(t)]
}

/// A message that passed validation.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub msg_type: MessageType,
    /// The known fields (timestamps normalized), `type` included.
    pub fields: FieldValues,
    pub debtor_id: i64,
    pub creditor_id: i64,
    /// `coordinator_id`, for the types that have one.
    pub coordinator_id: Option<i64>,
    /// `coordinator_type`, for the types that have one (AccountTransfer
    /// has one without a coordinator_id).
    pub coordinator_type: Option<String>,
    /// `ts` in microseconds since the Unix epoch.
    pub ts_micros: i64,
}

/// A message's known fields as JSON values, kept sorted by name: the
/// order they are written in (the order a JSON object with sorted keys
/// has).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FieldValues(Vec<(&'static str, Value)>);

impl FieldValues {
    fn position(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(n, _)| (*n).cmp(name))
    }

    /// The value of the field `name`, if the message has it.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.position(name).ok().map(|i| &self.0[i].1)
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.position(name).is_ok()
    }

    /// Sets the field `name` (added if missing).
    fn set(&mut self, name: &'static str, value: Value) {
        match self.position(name) {
            Ok(i) => self.0[i].1 = value,
            Err(i) => self.0.insert(i, (name, value)),
        }
    }

    /// The fields, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &Value)> {
        self.0.iter().map(|(n, v)| (*n, v))
    }
}

impl std::ops::Index<&str> for FieldValues {
    type Output = Value;

    /// The value of `name`, or `null` when the message has no such field.
    fn index(&self, name: &str) -> &Value {
        static NULL: Value = Value::Null;
        self.get(name).unwrap_or(&NULL)
    }
}

impl Serialize for FieldValues {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in &self.0 {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

/// Why a body does not pass its schema (for logs; peers only see
/// `Invalid <type> message.`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    #[error("the body is not valid UTF-8 JSON: {0}")]
    Json(String),
    #[error("the body is not a JSON object")]
    NotObject,
    #[error("missing field: {0}")]
    Missing(&'static str),
    #[error("invalid field: {0}")]
    Invalid(&'static str),
    #[error("the type field does not match the message type")]
    TypeMismatch,
    #[error("{0}")]
    Rule(&'static str),
}

fn check(value: &Value, kind: Kind) -> bool {
    match kind {
        Kind::Int(min, max) => match value {
            Value::Number(n) => n.as_i64().is_some_and(|v| v >= min && v <= max),
            _ => false,
        },
        Kind::NonZero => matches!(value, Value::Number(n) if n.as_i64().is_some_and(|v| v != 0)),
        Kind::Float(min, max) => match value {
            Value::Number(n) => n.as_f64().is_some_and(|v| v.is_finite() && v >= min && v <= max),
            _ => false,
        },
        Kind::Str { min, max, ascii } => match value {
            Value::String(s) => {
                (!ascii || s.is_ascii()) && {
                    let n = if s.is_ascii() { s.len() } else { s.chars().count() };
                    n >= min && n <= max
                }
            }
            _ => false,
        },
        Kind::Bytes(max) => matches!(value, Value::String(s) if s.len() <= max),
        Kind::Status { not_ok } => {
            matches!(value, Value::String(s) if s.is_ascii() && s.len() <= 30 && !(not_ok && s == "OK"))
        }
        Kind::Timestamp => matches!(value, Value::String(s) if Timestamp::parse(s).is_some()),
        Kind::Date => matches!(value, Value::String(s) if parse_date(s).is_some()),
        Kind::NoteFormat => matches!(value, Value::String(s)
            if s.len() <= 8 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')),
        Kind::Sha256 => matches!(value, Value::String(s)
            if s.is_empty() || (s.len() == 64 && (
                s.bytes().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
                || s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))))),
    }
}

fn int(fields: &FieldValues, name: &str) -> i64 {
    fields.get(name).and_then(Value::as_i64).unwrap_or_default()
}

/// The most fields a type has (AccountUpdate: 27), with room to spare.
const MAX_FIELDS: usize = 32;

/// Reads a JSON object in one pass: the type's known fields into their
/// slots (in table order), whether `type` names the type; unknown fields
/// are skipped without being built. A repeated key keeps its last value,
/// as a JSON object read into a map would.
struct Read<'t> {
    t: MessageType,
    groups: &'t [Fields; 4],
    type_ok: Option<bool>,
    slots: [Option<Value>; MAX_FIELDS],
}

impl Read<'_> {
    /// The slot of the known field `name`.
    fn slot(&mut self, name: &str) -> Option<&mut Option<Value>> {
        let i = self
            .groups
            .iter()
            .flat_map(|g| g.iter())
            .position(|(n, _)| *n == name)?;
        self.slots.get_mut(i)
    }
}

impl<'de> Visitor<'de> for &mut Read<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(Key(key)) = map.next_key()? {
            if key == "type" {
                let value: Value = map.next_value()?;
                self.type_ok = Some(value.as_str() == Some(self.t.as_str()));
            } else if let Some(slot) = self.slot(&key) {
                *slot = Some(map.next_value()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

/// An object key, borrowed from the body unless it has escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

impl Message {
    /// Validates a JSON body as a message of type `t`.
    pub fn parse(t: MessageType, body: &[u8]) -> Result<Message, SchemaError> {
        let text = std::str::from_utf8(body).map_err(|e| SchemaError::Json(e.to_string()))?;
        let groups = field_groups(t);
        let mut read = Read {
            t,
            groups: &groups,
            type_ok: None,
            slots: [const { None }; MAX_FIELDS],
        };
        let mut de = serde_json::Deserializer::from_str(text);
        if let Err(e) = de.deserialize_map(&mut read).and_then(|()| de.end()) {
            return Err(match serde_json::from_str::<Value>(text) {
                Ok(v) if !v.is_object() => SchemaError::NotObject,
                _ => SchemaError::Json(e.to_string()),
            });
        }
        match read.type_ok {
            Some(true) => {}
            Some(false) => return Err(SchemaError::TypeMismatch),
            None => return Err(SchemaError::Missing("type")),
        }
        let mut fields = Vec::with_capacity(1 + groups.iter().map(|g| g.len()).sum::<usize>());
        fields.push(("type", Value::String(t.as_str().into())));
        let mut ts_micros = 0;
        let slots = read.slots.iter_mut();
        for (&(name, kind), slot) in groups.iter().flat_map(|g| g.iter()).zip(slots) {
            let value = match (kind, slot.take().ok_or(SchemaError::Missing(name))?) {
                // Parsed once: the parse is the check, and gives the
                // normalized form.
                (Kind::Timestamp, Value::String(s)) => {
                    let parsed = Timestamp::parse(&s).ok_or(SchemaError::Invalid(name))?;
                    if name == "ts" {
                        ts_micros = parsed.unix_micros();
                    }
                    Value::String(parsed.to_iso())
                }
                (kind, value) if !check(&value, kind) => return Err(SchemaError::Invalid(name)),
                // Written back as floats, as the Python gateway does.
                (Kind::Float(..), Value::Number(n)) => n.as_f64().map(Value::from).unwrap_or(Value::Null),
                (_, v) => v,
            };
            fields.push((name, value));
        }
        fields.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let fields = FieldValues(fields);
        let msg = Message {
            msg_type: t,
            debtor_id: int(&fields, "debtor_id"),
            creditor_id: int(&fields, "creditor_id"),
            coordinator_id: fields.get("coordinator_id").and_then(Value::as_i64),
            coordinator_type: fields
                .get("coordinator_type")
                .and_then(Value::as_str)
                .map(str::to_owned),
            ts_micros,
            fields,
        };
        msg.check_rules()?;
        Ok(msg)
    }

    /// The cross-field rules of SPEC section 6.
    fn check_rules(&self) -> Result<(), SchemaError> {
        let f = &self.fields;
        match self.msg_type {
            MessageType::PrepareTransfer => {
                if int(f, "min_locked_amount") > int(f, "max_locked_amount") {
                    return Err(SchemaError::Rule("min_locked_amount exceeds max_locked_amount"));
                }
                match self.coordinator_type.as_deref() {
                    Some("direct") if self.coordinator_id != Some(self.creditor_id) => {
                        return Err(SchemaError::Rule(
                            "a direct transfer needs coordinator_id = creditor_id",
                        ));
                    }
                    Some("issuing")
                        if self.coordinator_id != Some(self.debtor_id) || self.creditor_id != 0 =>
                    {
                        return Err(SchemaError::Rule(
                            "an issuing transfer needs coordinator_id = debtor_id and creditor_id = 0",
                        ));
                    }
                    _ => {}
                }
            }
            MessageType::FinalizedTransfer
                if f.get("status_code").and_then(Value::as_str) != Some("OK")
                    && int(f, "committed_amount") != 0 =>
            {
                return Err(SchemaError::Rule(
                    "a failed transfer must have committed_amount = 0",
                ));
            }
            MessageType::AccountTransfer
                if int(f, "previous_transfer_number") >= int(f, "transfer_number") =>
            {
                return Err(SchemaError::Rule(
                    "previous_transfer_number must be below transfer_number",
                ));
            }
            _ => {}
        }
        Ok(())
    }

    /// Sets `creditor_id` (in the fields too).
    pub fn set_creditor_id(&mut self, id: i64) {
        self.creditor_id = id;
        self.fields.set("creditor_id", Value::from(id));
    }

    /// Sets `coordinator_id` (in the fields too).
    pub fn set_coordinator_id(&mut self, id: i64) {
        self.coordinator_id = Some(id);
        self.fields.set("coordinator_id", Value::from(id));
    }

    /// The message written again: the known fields only.
    pub fn to_json(&self) -> Vec<u8> {
        // Room for a typical message, so the writer seldom grows it.
        let mut out = Vec::with_capacity(512);
        match serde_json::to_writer(&mut out, &self.fields) {
            Ok(()) => out,
            Err(_) => Vec::new(),
        }
    }
}

/// Access to the field tables for the crate's tests.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    #[derive(Clone, Copy, Debug)]
    pub enum KindInfo {
        Int(i64, i64),
        NonZero,
        Float(f64, f64),
        Str { min: usize, max: usize, ascii: bool },
        Bytes(usize),
        Status { not_ok: bool },
        Timestamp,
        Date,
        NoteFormat,
        Sha256,
    }

    fn find(t: MessageType, name: &str) -> (&'static str, Kind) {
        field_groups(t)
            .into_iter()
            .flat_map(|g| g.iter())
            .find(|(n, _)| *n == name)
            .copied()
            .unwrap_or_else(|| panic!("{t:?} has no field {name}"))
    }

    pub fn kind_of(t: MessageType, name: &str) -> KindInfo {
        match find(t, name).1 {
            Kind::Int(a, b) => KindInfo::Int(a, b),
            Kind::NonZero => KindInfo::NonZero,
            Kind::Float(a, b) => KindInfo::Float(a, b),
            Kind::Str { min, max, ascii } => KindInfo::Str { min, max, ascii },
            Kind::Bytes(n) => KindInfo::Bytes(n),
            Kind::Status { not_ok } => KindInfo::Status { not_ok },
            Kind::Timestamp => KindInfo::Timestamp,
            Kind::Date => KindInfo::Date,
            Kind::NoteFormat => KindInfo::NoteFormat,
            Kind::Sha256 => KindInfo::Sha256,
        }
    }

    pub fn is_timestamp(t: MessageType, name: &str) -> bool {
        matches!(find(t, name).1, Kind::Timestamp)
    }

    pub fn static_name(t: MessageType, name: &str) -> &'static str {
        find(t, name).0
    }
}

#[cfg(test)]
mod table_tests {
    use super::*;

    #[test]
    fn every_type_fits_the_slots_and_names_each_field_once() {
        for t in MessageType::ALL {
            let names: Vec<&str> = field_groups(t)
                .iter()
                .flat_map(|g| g.iter())
                .map(|(n, _)| *n)
                .collect();
            assert!(names.len() <= MAX_FIELDS, "{t:?} has {} fields", names.len());
            let mut unique = names.clone();
            unique.sort_unstable();
            unique.dedup();
            assert_eq!(unique.len(), names.len(), "{t:?} names a field twice");
            assert!(!names.contains(&"type"), "{t:?}");
        }
    }
}
