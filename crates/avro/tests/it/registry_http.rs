//! The HTTP registry client against a small in-test server implementing the
//! Confluent endpoints it uses: register a schema under a subject, fetch a
//! schema by id, with caching, errors and basic authentication.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use apache_avro::AvroSchema;
use choreo_avro::{AvroCodec, Error, HttpRegistry, SchemaRegistry};
use choreo_core::Codecs;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, AvroSchema)]
struct OrderPlaced {
    order_id: u64,
}
choreo_core::event!(OrderPlaced, topic = "orders");

#[derive(Default)]
struct Registry {
    schemas: Vec<String>,
    subjects: HashMap<String, Vec<u32>>,
    requests: Vec<String>,
    authorization: Vec<Option<String>>,
}

/// A Confluent-compatible registry: `POST /subjects/{s}/versions` and
/// `GET /schemas/ids/{id}`. Returns its URL.
fn serve(state: Arc<Mutex<Registry>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let state = state.clone();
            std::thread::spawn(move || handle(stream, &state));
        }
    });
    url
}

fn handle(mut stream: TcpStream, state: &Mutex<Registry>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0;
        let mut auth = None;
        let mut content_type = String::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (k, v) = line.split_once(':').unwrap();
            match k.to_ascii_lowercase().as_str() {
                "content-length" => length = v.trim().parse().unwrap(),
                "authorization" => auth = Some(v.trim().to_owned()),
                "content-type" => content_type = v.trim().to_owned(),
                _ => {}
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let mut parts = request_line.split_whitespace();
        let (method, path) = (parts.next().unwrap(), parts.next().unwrap().to_owned());
        let mut st = state.lock().unwrap();
        st.requests.push(format!("{method} {path}"));
        st.authorization.push(auth);
        let (status, json) = if method == "POST" && path.starts_with("/subjects/") {
            assert_eq!(content_type, "application/vnd.schemaregistry.v1+json");
            let subject = path["/subjects/".len()..path.len() - "/versions".len()].to_owned();
            let schema = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["schema"]
                .as_str()
                .unwrap()
                .to_owned();
            let id = match st.schemas.iter().position(|s| *s == schema) {
                Some(i) => i as u32 + 1,
                None => {
                    st.schemas.push(schema);
                    st.schemas.len() as u32
                }
            };
            st.subjects.entry(subject).or_default().push(id);
            (200, serde_json::json!({ "id": id }))
        } else if let Some(id) = path.strip_prefix("/schemas/ids/") {
            let id: usize = id.parse().unwrap();
            match st.schemas.get(id.wrapping_sub(1)) {
                Some(s) => (200, serde_json::json!({ "schema": s })),
                None => (
                    404,
                    serde_json::json!({"error_code": 40403, "message": "Schema not found"}),
                ),
            }
        } else {
            (
                404,
                serde_json::json!({"error_code": 404, "message": "HTTP 404 Not Found"}),
            )
        };
        drop(st);
        let body = json.to_string();
        let reason = if status == 200 { "OK" } else { "Not Found" };
        write!(
            stream,
            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/vnd.schemaregistry.v1+json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        stream.flush().unwrap();
    }
}

#[test]
fn registers_under_the_topic_subject_and_fetches_by_id_once() {
    let state = Arc::new(Mutex::new(Registry::default()));
    let url = serve(state.clone());
    let producer_side = Arc::new(HttpRegistry::new(&url).basic_auth("key", "secret"));
    let codec = AvroCodec::with_registry(producer_side).with::<OrderPlaced>();
    let codecs = Codecs::json().encode_with(Arc::new(codec));
    let a = codecs.encode(&OrderPlaced { order_id: 1 }).unwrap();
    let b = codecs.encode(&OrderPlaced { order_id: 2 }).unwrap();
    assert_eq!(a[..5], b[..5], "one schema id");

    // A consumer with its own client: fetches the writer schema by id, once.
    let consumer_side = AvroCodec::new(HttpRegistry::new(&url));
    let reader = Codecs::json().decode_also(Arc::new(consumer_side));
    for (payload, want) in [(&a, 1), (&b, 2)] {
        let got: OrderPlaced = reader.decode(&codecs.content_type(), payload).unwrap();
        assert_eq!(got.order_id, want);
    }

    let st = state.lock().unwrap();
    assert_eq!(
        st.requests,
        vec!["POST /subjects/orders-value/versions", "GET /schemas/ids/1"],
        "each answer is cached"
    );
    assert_eq!(st.subjects["orders-value"], vec![1]);
    assert_eq!(
        st.authorization[0].as_deref(),
        Some("Basic a2V5OnNlY3JldA==")
    );
    assert_eq!(st.authorization[1], None);
}

#[test]
fn an_unknown_id_and_a_registry_error_are_reported() {
    let state = Arc::new(Mutex::new(Registry::default()));
    let url = serve(state);
    let registry = HttpRegistry::new(&url);
    let err = registry.schema(77).unwrap_err();
    assert!(matches!(err, Error::UnknownSchema { id: 77, .. }), "{err}");
    assert!(err.to_string().contains("schema id 77"));

    let codec = AvroCodec::new(HttpRegistry::new(&url));
    let decoded = Codecs::json()
        .decode_also(Arc::new(codec))
        .decode::<OrderPlaced>(&choreo_core::ContentType::Avro, &[0, 0, 0, 0, 77, 2]);
    let msg = decoded.unwrap_err().to_string();
    assert!(
        msg.starts_with("decode error:") && msg.contains("schema id 77"),
        "{msg}"
    );

    let unreachable = HttpRegistry::new("http://127.0.0.1:9");
    let err = unreachable
        .register("orders-value", "\"long\"")
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("http://127.0.0.1:9/subjects/orders-value/versions"),
        "{err}"
    );
}
