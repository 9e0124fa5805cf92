//! A fake API server for the controller's unit tests: a [`kube::Client`] over
//! `tower_test::mock`, whose requests a task answers from objects kept in memory.
//!
//! It keeps the parts of the API server's contract the controller relies on, including the
//! inconvenient ones: a status replace carrying a stale `resourceVersion` is refused with 409,
//! JSON patches are applied with their `test` operations (so a finalizer patch against a changed
//! list fails with 422), a missing object is a 404 `Status`, and every write bumps the
//! `resourceVersion`. Faults are injected per request ([`FakeApi::fail_next`]), and every request
//! is recorded in order for the test to read.
//!
//! Why a small server rather than scripted answers in order (as kube-rs's controller-rs
//! fixtures do): one reconcile here reads and writes through the engine, the status store and
//! the event sink, and a test that asserted the position of each request would break on every
//! harmless reordering. The tests assert the sequence where it matters and the stored state
//! otherwise. JSON patches are applied by `json-patch`, the library kube itself uses.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use kube::{Client, Resource};
use serde::Serialize;
use serde_json::{Value, json};

use crate::crd::ExperimentCampaign;

/// One request the controller made.
#[derive(Clone, Debug)]
pub struct Seen {
    /// `GET`, `PUT`, `PATCH`, `POST`...
    pub method: Method,
    /// The path, without the query.
    pub path: String,
    /// The JSON body (`null` for none).
    pub body: Value,
}

impl Seen {
    /// `"GET /api/v1/..."`, for asserting sequences.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// A fault to answer once, to the first request that matches.
struct Fault {
    method: Method,
    path_suffix: String,
    code: u16,
    message: String,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Value>,
    seen: Vec<Seen>,
    faults: Vec<Fault>,
    version: u64,
}

/// The fake API server; dropping it stops its task.
pub struct FakeApi {
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeApi {
    /// A client whose default namespace is `default`, and the server answering it.
    pub fn start() -> (Client, FakeApi) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Some((request, respond)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let bytes = body.collect_bytes().await.unwrap_or_default();
                let seen = Seen {
                    method: parts.method,
                    path: parts.uri.path().to_string(),
                    body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                };
                let (code, answer) = shared.lock().unwrap().answer(seen);
                let response = Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                    .unwrap();
                respond.send_response(response);
            }
        });
        (Client::new(service, "default"), FakeApi { state, task })
    }

    /// Stores `object` (a create or a replace by the test, outside the controller's view).
    pub fn put<K>(&self, object: &K)
    where
        K: Resource<DynamicType = ()> + Serialize,
    {
        let meta = object.meta();
        let path = object_path::<K>(meta.namespace.as_deref(), meta.name.as_deref().unwrap());
        let mut value = serde_json::to_value(object).unwrap();
        let mut state = self.state.lock().unwrap();
        state.stamp(&mut value);
        state.objects.insert(path, value);
    }

    /// The campaign as stored now.
    pub fn campaign(&self, namespace: &str, name: &str) -> Option<ExperimentCampaign> {
        let path = object_path::<ExperimentCampaign>(Some(namespace), name);
        let state = self.state.lock().unwrap();
        let value = state.objects.get(&path)?.clone();
        Some(serde_json::from_value(value).unwrap())
    }

    /// Every request so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// The requests so far as `"METHOD path"` lines.
    pub fn lines(&self) -> Vec<String> {
        self.seen().iter().map(Seen::line).collect()
    }

    /// Forgets the requests seen so far.
    pub fn clear_seen(&self) {
        self.state.lock().unwrap().seen.clear();
    }

    /// Answers the next `method` request whose path ends with `path_suffix` with `code`.
    pub fn fail_next(&self, method: Method, path_suffix: &str, code: u16, message: &str) {
        self.state.lock().unwrap().faults.push(Fault {
            method,
            path_suffix: path_suffix.to_string(),
            code,
            message: message.to_string(),
        });
    }
}

/// Where the API server keeps `K` named `name`.
pub fn object_path<K: Resource<DynamicType = ()>>(namespace: Option<&str>, name: &str) -> String {
    format!("{}/{name}", K::url_path(&(), namespace))
}

impl State {
    fn answer(&mut self, seen: Seen) -> (u16, Value) {
        self.seen.push(seen.clone());
        if let Some(fault) = self.take_fault(&seen) {
            return (fault.code, status(fault.code, &fault.message));
        }
        let (path, subresource) = match seen.path.strip_suffix("/status") {
            Some(path) => (path.to_string(), true),
            None => (seen.path.clone(), false),
        };
        match seen.method {
            Method::GET => self.get(&path),
            Method::PUT if subresource => self.replace_status(&path, seen.body),
            Method::PATCH => self.patch(&path, &seen.body),
            Method::POST => self.create(&path, seen.body),
            _ => (405, status(405, "not served by the fake API server")),
        }
    }

    fn take_fault(&mut self, seen: &Seen) -> Option<Fault> {
        let at = self
            .faults
            .iter()
            .position(|f| f.method == seen.method && seen.path.ends_with(&f.path_suffix))?;
        Some(self.faults.remove(at))
    }

    fn stamp(&mut self, object: &mut Value) {
        self.version += 1;
        object["metadata"]["resourceVersion"] = json!(self.version.to_string());
    }

    fn get(&self, path: &str) -> (u16, Value) {
        match self.objects.get(path) {
            Some(object) => (200, object.clone()),
            None => not_found(path),
        }
    }

    /// PUT …/status: only the status is taken, and only from a writer that read the latest
    /// version.
    fn replace_status(&mut self, path: &str, body: Value) -> (u16, Value) {
        let Some(stored) = self.objects.get(path) else {
            return not_found(path);
        };
        if body["metadata"]["resourceVersion"] != stored["metadata"]["resourceVersion"] {
            let message = "the object has been modified; please apply your changes to the latest version and try again";
            return (409, status(409, message));
        }
        let mut updated = stored.clone();
        updated["status"] = body["status"].clone();
        self.store(path, updated)
    }

    /// A JSON patch (a list of operations, as kube's finalizer helper sends) or a merge patch.
    fn patch(&mut self, path: &str, body: &Value) -> (u16, Value) {
        let Some(mut object) = self.objects.get(path).cloned() else {
            return not_found(path);
        };
        if body.is_array() {
            let Ok(mut patch) = serde_json::from_value::<json_patch::Patch>(body.clone()) else {
                return (400, status(400, "not a JSON patch"));
            };
            // The API server's JSON patch library takes a missing field as null in a `test`
            // (kube's finalizer helper relies on it for an object without finalizers).
            patch.0.retain(|op| match op {
                json_patch::PatchOperation::Test(t) => {
                    !(t.value.is_null() && object.pointer(t.path.as_str()).is_none())
                }
                _ => true,
            });
            if let Err(e) = json_patch::patch(&mut object, &patch) {
                return (422, status(422, &e.to_string()));
            }
        } else {
            json_patch::merge(&mut object, body);
        }
        self.store(path, object)
    }

    fn create(&mut self, collection: &str, body: Value) -> (u16, Value) {
        let Some(name) = body["metadata"]["name"].as_str() else {
            return (422, status(422, "metadata.name: Required value"));
        };
        let path = format!("{collection}/{name}");
        if self.objects.contains_key(&path) {
            return (409, status(409, "already exists"));
        }
        let (_, created) = self.store(&path, body);
        (201, created)
    }

    fn store(&mut self, path: &str, mut object: Value) -> (u16, Value) {
        self.stamp(&mut object);
        self.objects.insert(path.to_string(), object.clone());
        (200, object)
    }
}

fn not_found(path: &str) -> (u16, Value) {
    (404, status(404, &format!("{path} not found")))
}

/// A `Status` object, as the API server answers an error.
fn status(code: u16, message: &str) -> Value {
    let reason = StatusCode::from_u16(code)
        .ok()
        .and_then(|c| c.canonical_reason())
        .unwrap_or("Unknown")
        .replace(' ', "");
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}
