//! Value codecs of typed keyspaces: JSON (default) and bincode, both through serde.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// How a [`crate::Keyspace`] turns values into bytes and back.
///
/// ```
/// use cairn_client::{Codec, Json};
///
/// let bytes = Json.encode(&vec![1, 2]).unwrap();
/// assert_eq!(bytes, b"[1,2]");
/// let back: Vec<i32> = Json.decode(&bytes).unwrap();
/// assert_eq!(back, [1, 2]);
/// ```
pub trait Codec: Clone + Send + Sync + 'static {
    /// Encodes a value.
    fn encode<T: Serialize>(&self, value: &T) -> Result<Vec<u8>, String>;
    /// Decodes a value.
    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, String>;
}

/// JSON (`serde_json`): readable with `etcdctl get`, tolerant of added fields.
///
/// ```
/// use cairn_client::{Codec, Json};
/// let bytes = Json.encode(&serde_json::json!({"limit": 10})).unwrap();
/// assert_eq!(bytes, br#"{"limit":10}"#);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Json;

impl Codec for Json {
    fn encode<T: Serialize>(&self, value: &T) -> Result<Vec<u8>, String> {
        serde_json::to_vec(value).map_err(|e| e.to_string())
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }
}

/// bincode 1.x (`bincode::serialize`): compact and fast, but not
/// self-describing: every reader must use the same type definition.
///
/// ```
/// use cairn_client::{Bincode, Codec};
///
/// let bytes = Bincode.encode(&(7u32, "x".to_string())).unwrap();
/// let back: (u32, String) = Bincode.decode(&bytes).unwrap();
/// assert_eq!(back, (7, "x".to_string()));
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Bincode;

impl Codec for Bincode {
    fn encode<T: Serialize>(&self, value: &T) -> Result<Vec<u8>, String> {
        bincode::serialize(value).map_err(|e| e.to_string())
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, String> {
        bincode::deserialize(bytes).map_err(|e| e.to_string())
    }
}
