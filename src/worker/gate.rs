//! The gate: a filter instance placed *before* Envoy's buffer filter, with
//! the keygate filter after it. In its headers phase it refuses what the
//! headers alone condemn (`screen`, and a key the cache knows to be refused)
//! and starts the store lookup of a key not yet cached, so that the lookup
//! overlaps the body upload and a refused key is answered without waiting
//! for the body. Then it reads each body chunk as it passes (`model` and the
//! output limit, or the form's `model`; any keygate token) and at the end
//! leaves what it found where the keygate filter finds it: in this VM's
//! memory when the keygate filter runs in this VM (found by the request's
//! `x-request-id`, or, for a request without a usable one, by the gate's
//! tag, a request header the gate sets), else in the request's filter state
//! (`handover::Tapped`), for a keygate filter in another VM.

use keygate_proto::token;
use log::{info, warn};

use super::{blank_leaks, reply, Flow, Worker};
use crate::body::{BodyFacts, BodyReader};
use crate::callouts::GateWaiter;
use crate::decide::{check_key, ModelField};
use crate::errors::{Denial, Dialect};
use crate::handover::{self, Tapped};
use crate::host::{Buffer, Host, Map};
use crate::inbound::Inbound;
use crate::multipart::MultipartReader;
use crate::screen::screen;
use crate::surface::{BodyKind, Judge};

/// A refusal of a request whose body is announced at most this long waits
/// for the end of the body: refused before its body is read, a request
/// leaves its connection unusable (Envoy closes it), and a client would
/// reconnect for every refusal. A body this small costs what a connection's
/// read buffer may hold anyway (`per_connection_buffer_limit_bytes`).
const DEFER_UP_TO: u64 = 64 * 1024;

pub struct GateState {
    id: u32,
    max: u64,
    seen: u64,
    json: Option<BodyReader>,
    form: Option<MultipartReader>,
    tokens: token::TokenScanner,
    /// The lookup this gate waits for while the body uploads.
    watching: Option<String>,
    /// A refusal held until the end of a small body (see `DEFER_UP_TO`).
    deferred: Option<Denial>,
    dialect: Dialect,
    request_id: String,
    /// The token this gate read and its digest (`Found`).
    key: Option<(String, String)>,
}

impl GateState {
    pub fn new(id: u32, max_body_bytes: u64) -> GateState {
        GateState {
            id,
            max: max_body_bytes,
            seen: 0,
            json: None,
            form: None,
            tokens: token::TokenScanner::default(),
            watching: None,
            deferred: None,
            dialect: Dialect::OpenAi,
            request_id: String::new(),
            key: None,
        }
    }

    pub fn id(&self) -> u32 {
        self.id
    }
}

impl Worker {
    pub fn gate_headers(&mut self, host: &impl Host, gate: &mut GateState, end_of_stream: bool) -> Flow {
        self.enter(gate.id);
        let headers = host.headers(Map::RequestHeaders);
        let inbound = Inbound::from_headers(headers.iter());
        gate.request_id = inbound.request_id.to_string();
        let screened = match screen(&inbound, !end_of_stream, gate.max, None) {
            Ok(s) => s,
            Err((dialect, denial)) => {
                gate.dialect = dialect;
                // Headers can change only now, whenever the refusal is sent.
                blank_leaks(host, &inbound);
                return self.gate_refuse(host, gate, denial, inbound.content_length, end_of_stream);
            }
        };
        gate.dialect = screened.dialect;
        match (screened.surface.judge, screened.boundary) {
            (Judge::Model(BodyKind::Json), _) => gate.json = Some(self.spare_reader.take().unwrap_or_default()),
            (Judge::Model(BodyKind::Multipart), Some(b)) => gate.form = Some(MultipartReader::new(b)),
            _ => {}
        }
        let digest = token::digest(screened.token);
        if self.downstream && !end_of_stream {
            gate.key = Some((screened.token.to_string(), digest.clone()));
        }
        let now = self.now(host);
        match self.cache.get(&digest, now) {
            Some((lookup, crate::cache::Freshness::Fresh)) => {
                if let Err(denial) = check_key(&lookup, (now / 1000) as i64) {
                    return self.gate_refuse(host, gate, denial, inbound.content_length, end_of_stream);
                }
            }
            // Without a body the keygate filter runs next, in this call: it
            // looks the key up itself.
            _ if end_of_stream => {}
            // Waits for the store's answer while the body uploads; a refusal
            // is answered through this gate at once (`complete_lookup`).
            _ => {
                if self.ask_lookup(host, &digest).is_ok() {
                    let waiter =
                        GateWaiter { gate: gate.id, dialect: gate.dialect, request_id: gate.request_id.clone() };
                    self.callouts.wait_gate(&digest, waiter);
                    gate.watching = Some(digest);
                }
            }
        }
        if end_of_stream {
            // No body: nothing to hand over.
            self.hand_over(gate);
        } else if self.downstream && super::request::usable_request_id(&gate.request_id) {
            // The keygate filter of this VM finds what this gate hands
            // over as the gate just before it, checked by the request's id
            // (`claim_findings`): no tag, so no header change (a host call,
            // and Envoy's route cache cleared and the route found again:
            // ≈ 10 k instructions a request).
        } else {
            // Names this gate to the keygate filter (`publish`), over
            // whatever a client sent under that name.
            let tag = handover::gate_tag(self.vm_tag, gate.id);
            if host.set_header(Map::RequestHeaders, handover::GATE_HEADER, Some(tag.as_bytes())).is_err() {
                return self.gate_deny(host, gate, &Denial::internal("the request could not be prepared"));
            }
        }
        Flow::Continue
    }

    pub fn gate_body(&mut self, host: &impl Host, gate: &mut GateState, body_size: usize, end_of_stream: bool) -> Flow {
        self.enter(gate.id);
        if let Some(denial) = gate.deferred.take() {
            if end_of_stream {
                return self.gate_deny(host, gate, &denial);
            }
            gate.deferred = Some(denial);
            return Flow::Continue;
        }
        if body_size > 0 {
            gate.seen = gate.seen.saturating_add(body_size as u64);
            if gate.seen > gate.max {
                // Envoy's buffer filter answers 413; nothing is read past the limit.
                return Flow::Continue;
            }
            let Ok(chunk) = host.buffer(Buffer::RequestBody, 0, body_size) else {
                return self.gate_deny(host, gate, &Denial::internal("the request body could not be read"));
            };
            gate.tokens.feed(&chunk);
            if let Some(json) = gate.json.as_mut() {
                json.feed(&chunk);
            }
            if let Some(form) = gate.form.as_mut() {
                form.feed(&chunk);
            }
        }
        if end_of_stream {
            self.publish(host, gate);
        }
        Flow::Continue
    }

    pub fn gate_trailers(&mut self, host: &impl Host, gate: &mut GateState) -> Flow {
        self.enter(gate.id);
        let denial = gate.deferred.take().unwrap_or_else(Denial::unexpected_trailers);
        self.gate_deny(host, gate, &denial)
    }

    pub fn gate_done(&mut self, gate: &mut GateState) {
        self.hand_over(gate);
        self.findings.remove(&gate.id);
        self.left(gate.id);
    }

    /// Refuses now, or at the end of a small body (nothing of it is read).
    fn gate_refuse(
        &mut self,
        host: &impl Host,
        gate: &mut GateState,
        denial: Denial,
        content_length: Option<u64>,
        end_of_stream: bool,
    ) -> Flow {
        info!("keygate: request {} refused from its headers: {}", gate.request_id, denial.code);
        if !end_of_stream && content_length.is_some_and(|n| n <= DEFER_UP_TO) {
            gate.deferred = Some(denial);
            return Flow::Continue;
        }
        self.gate_deny(host, gate, &denial)
    }

    fn gate_deny(&mut self, host: &impl Host, gate: &mut GateState, denial: &Denial) -> Flow {
        self.hand_over(gate);
        reply(host, &mut self.metrics, gate.dialect, &gate.request_id, denial);
        Flow::Pause
    }

    /// From here on the keygate filter (or nobody) answers this request.
    fn hand_over(&mut self, gate: &mut GateState) {
        if gate.watching.take().is_some() {
            self.callouts.stop_waiting(gate.id);
        }
    }

    /// The body ended: the keygate filter gets the headers next.
    fn publish(&mut self, host: &impl Host, gate: &mut GateState) {
        let mut facts = match (gate.json.take(), gate.form.take()) {
            (Some(mut json), _) => {
                let facts = json.finish();
                self.spare_reader = Some(json);
                facts
            }
            (None, Some(form)) => BodyFacts::of(form.finish()),
            (None, None) => BodyFacts::of(ModelField::Absent),
        };
        facts.access_key = gate.tokens.found();
        self.hand_over(gate);
        // The keygate filter of this VM takes them from memory (it finds
        // this gate by its tag); one in another VM, from the request's
        // filter state.
        if self.downstream {
            let request_id = std::mem::take(&mut gate.request_id);
            self.findings.insert(gate.id, super::Found { facts, key: gate.key.take(), request_id });
            return;
        }
        let tapped = Tapped { vm: self.vm_tag, gate: gate.id, facts };
        if host.set_property(&[handover::BODY], tapped.encode().as_bytes()).is_err() {
            // The keygate filter refuses a body without findings.
            warn!("keygate: request {}: could not hand over what the body holds", gate.request_id);
        }
    }
}
