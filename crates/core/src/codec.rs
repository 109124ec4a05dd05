//! Payload codecs: JSON built in, others (Avro) plug in through [`Codec`].

use std::sync::Arc;

use bytes::Bytes;

use crate::{ContentType, Error, Event, Result};

/// What a codec knows about the payload it encodes or decodes.
#[derive(Debug, Clone, Copy)]
pub struct PayloadMeta<'a> {
    /// Event type name.
    pub event_type: &'a str,
    /// Topic the event is published to or was read from.
    pub topic: &'a str,
}

/// A payload codec other than the built-in JSON one.
///
/// Codecs work on serde's data model through [`serde_json::Value`], so one
/// object-safe trait serves every event type: the runtime turns a typed event
/// into a `Value` and hands it to [`Codec::encode`]; on the way in, the `Value`
/// from [`Codec::decode`] is deserialized into the handler's type. JSON itself
/// never takes this detour (see [`Codecs`]).
///
/// Implementations must be thread-safe and should cache whatever they fetch
/// (schemas), since `encode` and `decode` run for every event.
pub trait Codec: Send + Sync + 'static {
    /// The content type this codec writes, and the one it reads.
    fn content_type(&self) -> ContentType;

    /// Encodes a payload.
    fn encode(&self, meta: PayloadMeta<'_>, value: &serde_json::Value) -> Result<Bytes>;

    /// Decodes a payload.
    fn decode(&self, meta: PayloadMeta<'_>, data: &[u8]) -> Result<serde_json::Value>;
}

/// The JSON codec (`application/json`), for use where a [`Codec`] object is
/// wanted, such as decoding a dead-lettered payload for display.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonCodec;

impl Codec for JsonCodec {
    fn content_type(&self) -> ContentType {
        ContentType::Json
    }

    fn encode(&self, meta: PayloadMeta<'_>, value: &serde_json::Value) -> Result<Bytes> {
        serde_json::to_vec(value)
            .map(Bytes::from)
            .map_err(|e| Error::Encode {
                event_type: meta.event_type.to_owned(),
                content_type: "application/json".to_owned(),
                reason: e.to_string(),
            })
    }

    fn decode(&self, meta: PayloadMeta<'_>, data: &[u8]) -> Result<serde_json::Value> {
        serde_json::from_slice(data).map_err(|e| Error::Decode {
            event_type: meta.event_type.to_owned(),
            content_type: "application/json".to_owned(),
            reason: e.to_string(),
        })
    }
}

/// The codecs a service uses: one to encode what it publishes (JSON by
/// default) and every registered one to decode what it receives, chosen by
/// each payload's content type. JSON is always available for decoding, and is
/// also used for payloads with an unknown content type (foreign records).
///
/// Cloning is cheap.
#[derive(Clone, Default)]
pub struct Codecs {
    encoder: Option<Arc<dyn Codec>>,
    decoders: Vec<Arc<dyn Codec>>,
}

impl std::fmt::Debug for Codecs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codecs")
            .field("encoder", &self.encoder.as_ref().map(|c| c.content_type()))
            .field(
                "decoders",
                &self
                    .decoders
                    .iter()
                    .map(|c| c.content_type())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Codecs {
    /// JSON for encoding and decoding.
    pub fn json() -> Self {
        Codecs::default()
    }

    /// Encodes with `codec` (and decodes its content type too).
    pub fn encode_with(mut self, codec: Arc<dyn Codec>) -> Self {
        self.decoders.push(codec.clone());
        self.encoder = Some(codec);
        self
    }

    /// Also decodes `codec`'s content type.
    pub fn decode_also(mut self, codec: Arc<dyn Codec>) -> Self {
        self.decoders.push(codec);
        self
    }

    /// The content type published events get.
    #[inline]
    pub fn content_type(&self) -> ContentType {
        self.encoder
            .as_ref()
            .map_or(ContentType::Json, |c| c.content_type())
    }

    /// Encodes a typed event with the encoding codec.
    pub fn encode<E: Event>(&self, event: &E) -> Result<Bytes> {
        let meta = PayloadMeta {
            event_type: E::TYPE,
            topic: E::TOPIC,
        };
        match &self.encoder {
            None => bytes_from_scratch(|buf| serde_json::to_writer(buf, event)).map_err(|e| {
                Error::Encode {
                    event_type: E::TYPE.to_owned(),
                    content_type: "application/json".to_owned(),
                    reason: e.to_string(),
                }
            }),
            Some(codec) => {
                let value = serde_json::to_value(event).map_err(|e| Error::Encode {
                    event_type: E::TYPE.to_owned(),
                    content_type: codec.content_type().to_string(),
                    reason: e.to_string(),
                })?;
                codec.encode(meta, &value)
            }
        }
    }

    /// Decodes a payload of content type `content_type` into `E`.
    pub fn decode<E: Event>(&self, content_type: &ContentType, data: &[u8]) -> Result<E> {
        self.decode_as(
            content_type,
            data,
            PayloadMeta {
                event_type: E::TYPE,
                topic: E::TOPIC,
            },
        )
    }

    /// Decodes a payload into any deserializable type.
    pub fn decode_as<T: serde::de::DeserializeOwned>(
        &self,
        content_type: &ContentType,
        data: &[u8],
        meta: PayloadMeta<'_>,
    ) -> Result<T> {
        let decode_err = |ct: &ContentType, e: &dyn std::fmt::Display| Error::Decode {
            event_type: meta.event_type.to_owned(),
            content_type: ct.to_string(),
            reason: e.to_string(),
        };
        if *content_type != ContentType::Json {
            if let Some(codec) = self
                .decoders
                .iter()
                .find(|c| c.content_type() == *content_type)
            {
                let value = codec.decode(meta, data)?;
                return serde_json::from_value(value).map_err(|e| decode_err(content_type, &e));
            }
            if *content_type == ContentType::Avro {
                return Err(Error::Decode {
                    event_type: meta.event_type.to_owned(),
                    content_type: content_type.to_string(),
                    reason: "no Avro codec is registered with this service".to_owned(),
                });
            }
        }
        serde_json::from_slice(data).map_err(|e| decode_err(&ContentType::Json, &e))
    }

    /// Decodes a payload into a JSON value, for display and tools.
    pub fn decode_value(
        &self,
        content_type: &ContentType,
        data: &[u8],
        meta: PayloadMeta<'_>,
    ) -> Result<serde_json::Value> {
        self.decode_as(content_type, data, meta)
    }
}

/// Runs `write` on a buffer reused by the thread and returns what it wrote as
/// `Bytes` of exactly that size: one allocation per payload, none for growing
/// the buffer, and none for the shared header `Bytes` adds to a `Vec` whose
/// length is not its capacity.
pub(crate) fn bytes_from_scratch<E>(
    write: impl FnOnce(&mut Vec<u8>) -> std::result::Result<(), E>,
) -> std::result::Result<Bytes, E> {
    /// Larger buffers are given back after use rather than kept.
    const KEEP: usize = 64 * 1024;
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(1024));
    }
    // A nested call (an encoder that encodes), or one while the thread's
    // locals are being torn down, gets a buffer of its own.
    let mut write = Some(write);
    let reused = SCRATCH.try_with(|cell| {
        let mut buf = cell.try_borrow_mut().ok()?;
        let write = write.take()?;
        buf.clear();
        let written = write(&mut buf).map(|()| Bytes::copy_from_slice(&buf));
        if buf.capacity() > KEEP {
            *buf = Vec::with_capacity(1024);
        }
        Some(written)
    });
    if let Ok(Some(written)) = reused {
        return written;
    }
    let write = write
        .take()
        .expect("not run when the buffer was not available");
    let mut own = Vec::new();
    write(&mut own)?;
    Ok(Bytes::from(own))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct OrderPlaced {
        order_id: u64,
    }
    crate::event!(OrderPlaced, topic = "orders");

    /// A toy codec proving the plug-in path: JSON text reversed.
    struct Reversed;
    impl Codec for Reversed {
        fn content_type(&self) -> ContentType {
            ContentType::Other(crate::Name::from_static("application/x-reversed"))
        }
        fn encode(&self, meta: PayloadMeta<'_>, value: &serde_json::Value) -> Result<Bytes> {
            let mut v = JsonCodec.encode(meta, value)?.to_vec();
            v.reverse();
            Ok(v.into())
        }
        fn decode(&self, meta: PayloadMeta<'_>, data: &[u8]) -> Result<serde_json::Value> {
            let mut v = data.to_vec();
            v.reverse();
            JsonCodec.decode(meta, &v)
        }
    }

    /// Integer map keys.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Tally {
        note: String,
        counts: std::collections::BTreeMap<u32, String>,
    }
    crate::event!(Tally, topic = "tallies");

    /// Fails to serialize, as serde_json reports it.
    #[derive(Debug, Deserialize)]
    struct Unwritable;
    impl Serialize for Unwritable {
        fn serialize<S: serde::Serializer>(&self, _: S) -> std::result::Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("cannot be written"))
        }
    }
    crate::event!(Unwritable, topic = "nowhere");

    #[test]
    fn json_payloads_are_serde_json_text() {
        let codecs = Codecs::json();
        let e = OrderPlaced { order_id: 7 };
        assert_eq!(codecs.encode(&e).unwrap(), serde_json::to_vec(&e).unwrap());
        let t = Tally {
            note: "tab\there \"quoted\"".into(),
            counts: [(1, "one".to_owned()), (2, "two".to_owned())].into(),
        };
        let data = codecs.encode(&t).unwrap();
        assert_eq!(data, serde_json::to_vec(&t).unwrap());
        assert_eq!(
            codecs.decode::<Tally>(&ContentType::Json, &data).unwrap(),
            t
        );
        // An error is serde_json's.
        let err = codecs.encode(&Unwritable).unwrap_err().to_string();
        assert!(err.contains("cannot be written"), "{err}");
    }

    #[test]
    fn json_round_trip() {
        let c = Codecs::json();
        let b = c.encode(&OrderPlaced { order_id: 7 }).unwrap();
        assert_eq!(&b[..], br#"{"order_id":7}"#);
        let back: OrderPlaced = c.decode(&ContentType::Json, &b).unwrap();
        assert_eq!(back, OrderPlaced { order_id: 7 });
    }

    #[test]
    fn plugged_codec_round_trip_and_json_still_decodes() {
        let c = Codecs::json().encode_with(Arc::new(Reversed));
        let b = c.encode(&OrderPlaced { order_id: 9 }).unwrap();
        assert_eq!(&b[..], br#"}9:"di_redro"{"#);
        let back: OrderPlaced = c.decode(&c.content_type(), &b).unwrap();
        assert_eq!(back.order_id, 9);
        let json: OrderPlaced = c.decode(&ContentType::Json, br#"{"order_id":1}"#).unwrap();
        assert_eq!(json.order_id, 1);
    }

    #[test]
    fn decode_errors_name_the_event_and_say_decode_error() {
        let c = Codecs::json();
        let err = c
            .decode::<OrderPlaced>(&ContentType::Json, b"not json")
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("decode error:"), "{msg}");
        assert!(msg.contains("OrderPlaced"), "{msg}");
    }

    #[test]
    fn scratch_bytes_are_exactly_what_was_written_even_when_nested_or_large() {
        let big = vec![b'x'; 100_000];
        let outer = bytes_from_scratch(|buf| {
            buf.extend_from_slice(b"outer:");
            let inner = bytes_from_scratch(|inner| {
                inner.extend_from_slice(b"inner");
                Ok::<(), ()>(())
            })?;
            buf.extend_from_slice(&inner);
            Ok::<(), ()>(())
        })
        .unwrap();
        assert_eq!(&outer[..], b"outer:inner");
        let large = bytes_from_scratch(|buf| {
            buf.extend_from_slice(&big);
            Ok::<(), ()>(())
        })
        .unwrap();
        assert_eq!(large.len(), 100_000);
        // The buffer starts empty every time; a failed write returns its error.
        let again = bytes_from_scratch(|buf| {
            buf.push(b'1');
            Ok::<(), ()>(())
        })
        .unwrap();
        assert_eq!(&again[..], b"1");
        assert_eq!(bytes_from_scratch(|_| Err::<(), _>("no")), Err("no"));
    }
}
