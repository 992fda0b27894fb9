//! The one protocol-neutral step every front end (and the CLI) takes to answer a
//! question: a [`Call`] and its [`Question`]s go in, the engine decides them against one
//! snapshot, and a [`Decision`] (or a [`Refusal`]) comes out, with the call's metrics,
//! audit records and log lines written from it here, in one place ([`record`]).
//!
//! Front ends (`api::authorizer`, `api::ext_authz`) are wire adapters around this: they
//! turn their request into questions and the answer into their response, and nothing
//! else. In the server, deciding runs on the decision [`Pool`], off the async workers
//! ([`Decider::off_workers`]). The vocabulary is the engine's: a *decision* allows or
//! denies; a request that is not decided is *refused*, for a [`Reason`].

mod pool;
mod record;
mod request_id;
mod search;
mod shadow;

use std::{net::SocketAddr, sync::Arc, time::Instant};

use serde_json::{Map, Value as Json};

pub use self::{
    pool::{Pool, PoolError},
    request_id::{DecisionIds, RequestId, RequestIds},
    search::{Cursor, SearchContext, SearchPage, SearchRequest, Searched},
    shadow::Shadow,
};
pub use crate::engine::{
    CanonicalContext, ContextInput, Decision, Effect, EntitiesInput, EntityInput, PolicyError,
    Query, Refusal, RequestEntities,
    cache::{CanonicalBytes, Encoder, MAX_CONTEXT_KEY_BYTES},
};
pub use crate::telemetry::metrics::{Api, Reason};
use crate::{
    config::{Config, same_caller},
    engine::{CheckedContexts, Engine, EngineOptions},
    policy::Snapshot,
    telemetry::{AuditLog, Metrics, OncePerSecond},
};

/// Where decisions are reported: the metrics registry and the decision log.
#[derive(Debug, Clone)]
pub struct Telemetry {
    /// Counted into by every call and reload; rendered at `/metrics`.
    pub metrics: Metrics,
    /// One record per decision (or none, when off).
    pub audit: Arc<AuditLog>,
}

impl Telemetry {
    /// Metrics only; the audit log off (tests, benchmarks and the CLI).
    pub fn metrics_only(metrics: Metrics) -> Self {
        Self {
            audit: Arc::new(AuditLog::off(metrics.clone())),
            metrics,
        }
    }
}

/// One question of a call, in Cedar's terms, with the context values the audit log may
/// keep (those of its allow-listed keys, as the caller wrote them; see
/// [`Decider::recorded_keys`]).
#[derive(Debug, Clone)]
pub struct Question {
    /// What is asked.
    pub query: Query,
    /// Allow-listed context values for the audit record.
    pub recorded_context: Map<String, Json>,
}

impl From<Query> for Question {
    fn from(query: Query) -> Self {
        Self {
            query,
            recorded_context: Map::new(),
        }
    }
}

/// One call being answered: which API, its request id, where it came from, who the
/// caller is, and when it started.
#[derive(Debug, Clone)]
pub struct Call {
    api: Api,
    id: RequestId,
    /// The server's id of its decision (of its items': this, a dot and the index).
    decision_id: String,
    peer: Option<SocketAddr>,
    caller: Option<String>,
    started: Instant,
    /// When the call's answer is no longer waited for: long work (a search, a batch)
    /// stops there.
    deadline: Option<Instant>,
    /// Whether this call's allows are audited: drawn once per call by the server, so a
    /// caller cannot choose it (a batch is kept or left whole).
    keep_allows: bool,
    /// Whether a refusal is answered with a deny (ext_authz: Envoy sees a 403, never an
    /// error), and so audited like one.
    refusals_deny: bool,
    /// Bytes of the call's message, as its front end read it (0 until told): what a copy
    /// of its questions for the shadow set is charged.
    size: usize,
}

impl Call {
    /// Which API it came through.
    pub fn api(&self) -> Api {
        self.api
    }

    /// Its request id.
    pub fn id(&self) -> &RequestId {
        &self.id
    }

    /// The id of its decision, for a call that decides one question: unique, the
    /// server's own (whatever request id the caller sent), in the answer and the audit
    /// record alike.
    pub fn decision_id(&self) -> &str {
        &self.decision_id
    }

    /// The id of the decision of item `item` of a call with many (a batch):
    /// `<decision id>.<item>`.
    pub fn item_decision_id(&self, item: usize) -> String {
        format!("{}.{item}", self.decision_id)
    }

    /// The id of decision `item` of the call, or of its one decision (`None`).
    pub fn decision_id_of(&self, item: Option<usize>) -> String {
        match item {
            Some(item) => self.item_decision_id(item),
            None => self.decision_id.clone(),
        }
    }

    /// The span its log lines are written in: its API, request id and decision id.
    pub fn span(&self) -> tracing::Span {
        let name = match self.api {
            Api::IsAuthorized => "cedarpdp.v1.Authorizer/IsAuthorized",
            Api::Batch => "cedarpdp.v1.Authorizer/BatchIsAuthorized",
            Api::ExtAuthz => "envoy.service.auth.v3.Authorization/Check",
            Api::Authzen => "authzen",
        };
        tracing::info_span!(
            "call",
            api = self.api.label(),
            request_id = %self.id,
            decision_id = %self.decision_id,
            otel.name = name,
            otel.kind = "server",
        )
    }

    /// The verified identity of its caller, once admitted.
    pub fn caller(&self) -> Option<&str> {
        self.caller.as_deref()
    }

    /// Gives it a deadline: past it, long work for it stops (see [`Call::past_deadline`]).
    pub fn until(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Its refusal when its deadline has passed (its caller was answered already, or is
    /// about to be, with a timeout).
    pub fn past_deadline(&self) -> Result<(), Refusal> {
        match self.deadline {
            Some(deadline) if Instant::now() >= deadline => Err(Refusal::new(
                Reason::Timeout,
                "",
                "the call's deadline passed (request_timeout_ms)",
            )),
            _ => Ok(()),
        }
    }

    /// Notes that its message was `bytes` long (what a copy of it may hold in memory).
    pub fn weighs(&mut self, bytes: usize) {
        self.size = bytes;
    }

    /// Answers its refusals with a deny, audited like one (ext_authz).
    pub fn refusals_deny(mut self) -> Self {
        self.refusals_deny = true;
        self
    }
}

/// What [`Decider::decide_if_kept`] did with a question.
#[derive(Debug)]
pub enum Kept {
    /// Its decision was kept: answered (and reported).
    Answered(Result<Decision, Refusal>),
    /// Nothing kept for it: the question, to be decided.
    No(Box<Question>),
}

/// Who may call an API: the identities its caller presented, checked by the front end
/// against its allow-list (see `api::callers`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Admitted, with its verified identity when it has one.
    Admitted(Option<String>),
    /// Not on the allow-list: the identities it presented (none without a certificate).
    NotAllowed(Vec<String>),
}

/// Decides questions against snapshots and reports every answer.
#[derive(Debug)]
pub struct Decider {
    engine: Engine,
    max_batch_items: usize,
    telemetry: Telemetry,
    /// With `request_entities = "replace"`, the only callers trusted with it (others'
    /// entities are taken as with `"add"`); `None`: every caller.
    replace_callers: Option<Vec<String>>,
    /// Where decisions run, off the async workers; `None` decides on the caller's
    /// thread (the CLI).
    pool: Option<Pool>,
    ids: RequestIds,
    decision_ids: DecisionIds,
    /// Warnings about refused callers, once a second at most.
    caller_warnings: OncePerSecond,
    /// The shadow policy set sampled calls are also decided against, off the request
    /// path; `None` when there is none.
    shadow: Option<Shadow>,
}

impl Decider {
    /// A decider with `engine`, refusing batches over `max_batch_items`, reporting to
    /// `telemetry`.
    pub fn new(engine: Engine, max_batch_items: usize, telemetry: Telemetry) -> Self {
        Self {
            engine,
            max_batch_items,
            telemetry,
            replace_callers: None,
            pool: None,
            ids: RequestIds::new(),
            decision_ids: DecisionIds::new(),
            caller_warnings: OncePerSecond::new(),
            shadow: None,
        }
    }

    /// Also decides a sampled share of calls against `shadow`'s policy set, off the
    /// request path.
    pub fn with_shadow(mut self, shadow: Shadow) -> Self {
        self.shadow = Some(shadow);
        self
    }

    /// The shadow policy set, when there is one.
    pub fn shadow(&self) -> Option<&Shadow> {
        self.shadow.as_ref()
    }

    /// A shadow job for `call` when there is a shadow set and the sample draws the call.
    fn shadow_draw(&self, call: &Call, entities: &EntitiesInput) -> Option<shadow::Pending> {
        let shadow = self.shadow.as_ref()?;
        shadow.draw(call, entities, self.entities_mode(call))
    }

    /// Decides on `pool`'s threads, off the async workers (the server).
    pub fn on_pool(mut self, pool: Pool) -> Self {
        self.pool = Some(pool);
        self
    }

    /// Runs `work` (deciding a call; `heavy` when the call sends entities or is a large
    /// batch) off the async workers when there is a pool, else here; a panic in it is an
    /// error, never an answer.
    pub async fn off_workers<T, F>(&self, heavy: bool, work: F) -> Result<T, PoolError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        match &self.pool {
            Some(pool) => pool.run(heavy, work).await,
            None => std::panic::catch_unwind(std::panic::AssertUnwindSafe(work))
                .map_err(|_| PoolError::Panicked),
        }
    }

    /// Reports a call that failed unexpectedly (a panic while deciding): counted as
    /// `internal` and logged; the front end answers it with an error or a deny.
    pub fn failed(&self, call: &Call, error: PoolError) -> Refusal {
        tracing::error!(request_id = %call.id, %error, "a call failed unexpectedly; answered without a decision");
        let refusal = Refusal::new(Reason::Internal, "", error.to_string());
        let metrics = &self.telemetry.metrics;
        metrics.call_took(call.api, call.started.elapsed());
        metrics.refused(call.api, refusal.reason());
        refusal
    }

    /// With `request_entities = "replace"`, trusts only `callers` (verified identities)
    /// with it; other callers' entities are taken as with `"add"`.
    pub fn replace_only_for(mut self, callers: Vec<String>) -> Self {
        self.replace_callers = Some(callers);
        self
    }

    /// The decider a server configured by `config` answers with: its request validation
    /// and limits, reporting to `telemetry`.
    pub fn for_config(config: &Config, telemetry: Telemetry) -> Self {
        let options = EngineOptions {
            on_forbid_error: config.on_forbid_error,
            request_entities: config.request_entities,
            ..EngineOptions::new(config.validate_requests, &config.limits)
        };
        let decider = Self::new(
            Engine::new(options),
            config.limits.max_batch_items,
            telemetry,
        );
        match config
            .tls
            .as_ref()
            .and_then(|tls| tls.request_entities_replace_callers.clone())
        {
            Some(callers) => decider.replace_only_for(callers),
            None => decider,
        }
    }

    /// The engine it decides with.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Where it reports.
    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    /// The context keys whose values a [`Question`] should carry for the audit log: none
    /// when the log is off.
    pub fn recorded_keys(&self) -> &[String] {
        if self.telemetry.audit.enabled() {
            self.telemetry.audit.context_keys()
        } else {
            &[]
        }
    }

    /// Starts a call on `api`: its id (the caller's `given` one, else a new one), its
    /// peer, its clock, and whether its allows are audited.
    pub fn start(&self, api: Api, given: Option<RequestId>, peer: Option<SocketAddr>) -> Call {
        Call {
            api,
            id: given.unwrap_or_else(|| self.ids.next()),
            decision_id: self.decision_ids.next(),
            peer,
            caller: None,
            started: Instant::now(),
            deadline: None,
            keep_allows: self.telemetry.audit.sample_allows(),
            refusals_deny: false,
            size: 0,
        }
    }

    /// Admits the call's caller (its identity is kept for the audit log), or refuses it:
    /// counted, and logged (the identity is a certificate's name, not a secret) as a
    /// warning once a second at most, so that a refused client cannot flood the log.
    /// The refusal names `service` and the identities presented.
    pub fn admit(
        &self,
        call: &mut Call,
        service: &str,
        admission: Admission,
    ) -> Result<(), Refusal> {
        let identities = match admission {
            Admission::Admitted(caller) => {
                call.caller = caller;
                return Ok(());
            }
            Admission::NotAllowed(identities) => identities,
        };
        let refusal = Refusal::new(
            Reason::CallerNotAllowed,
            service,
            match identities.as_slice() {
                [] => "the caller presented no certificate identity (SPIFFE URI or DNS name)"
                    .to_owned(),
                ids => format!("caller {} is not allowed", ids.join(", ")),
            },
        );
        let caller = identities.join(", ");
        if self.caller_warnings.ready() {
            tracing::warn!(%caller, peer = ?call.peer, "caller refused: not on this API's allow-list");
        } else {
            tracing::debug!(%caller, peer = ?call.peer, "caller refused: not on this API's allow-list");
        }
        // Counted, never audited: no question of this caller was read.
        let metrics = &self.telemetry.metrics;
        metrics.call_took(call.api, call.started.elapsed());
        metrics.refused(call.api, refusal.reason());
        Err(refusal)
    }

    /// Decides one question with the entities its call sent, against `snapshot`, and
    /// reports the answer (or the refusal).
    pub fn decide(
        &self,
        call: &Call,
        snapshot: &Snapshot,
        entities: EntitiesInput,
        question: Question,
    ) -> Result<Decision, Refusal> {
        self.decide_reported(
            call,
            snapshot,
            entities,
            question,
            |entities, query, asked| self.one(call, snapshot, entities, query, asked),
        )
    }

    /// [`Decider::decide`] for a question asked with no entities, when its decision is
    /// kept from before on `snapshot` (see `engine::cache`): answered and reported as
    /// `decide` would, with no evaluation, so cheaply that an async worker may do it.
    /// Gives the question back when nothing is kept for it.
    pub fn decide_if_kept(&self, call: &Call, snapshot: &Snapshot, question: Question) -> Kept {
        let Some(decision) = self.engine.kept(snapshot, &question.query) else {
            return Kept::No(Box::new(question));
        };
        Kept::Answered(self.decide_reported(
            call,
            snapshot,
            EntitiesInput::None,
            question,
            |_, _, _| Ok(decision),
        ))
    }

    /// Whether a question may be answered by [`Decider::decide_if_kept`] at all.
    pub fn keeps_decisions(&self) -> bool {
        self.engine.keeps_decisions()
    }

    /// One question answered by `decide` (with its call's entities, the query, and where
    /// to note what was asked), then reported: the shadow copy, the span, the metrics and
    /// the audit record.
    fn decide_reported(
        &self,
        call: &Call,
        snapshot: &Snapshot,
        entities: EntitiesInput,
        question: Question,
        decide: impl FnOnce(
            EntitiesInput,
            Query,
            &mut Option<record::Asked>,
        ) -> Result<Decision, Refusal>,
    ) -> Result<Decision, Refusal> {
        let mut shadowed = self.shadow_draw(call, &entities);
        if let Some(pending) = &mut shadowed {
            pending.ask(None, &question);
        }
        let Question {
            query,
            recorded_context,
        } = question;
        let mut asked = self.asked(&query, recorded_context);
        let span = decide_span(snapshot);
        let decided = span.in_scope(|| decide(entities, query, &mut asked));
        if let Ok(decision) = &decided {
            note_decisions(&span, std::slice::from_ref(decision));
        }
        if let (Some(shadow), Some(mut pending)) = (&self.shadow, shadowed) {
            pending.answered(decided.as_ref(), snapshot);
            shadow.submit(pending);
        }
        match &decided {
            Ok(decision) => self.record_decisions(call, snapshot, [(decision, asked)], false),
            Err(refusal) => self.record_refusal(call, refusal, asked, Some(snapshot)),
        }
        decided
    }

    /// The mode `call`'s entities are taken in: the configured one, except that a caller
    /// not trusted with `Replace` gets `Add`.
    fn entities_mode(&self, call: &Call) -> RequestEntities {
        let configured = self.engine.options().request_entities;
        match (&self.replace_callers, call.caller()) {
            (Some(trusted), caller) if configured == RequestEntities::Replace => {
                if caller.is_some_and(|c| trusted.iter().any(|t| same_caller(t, c))) {
                    RequestEntities::Replace
                } else {
                    RequestEntities::Add
                }
            }
            _ => configured,
        }
    }

    /// Decides one question, noting the entities its call sent in `asked`.
    fn one(
        &self,
        call: &Call,
        snapshot: &Snapshot,
        entities: EntitiesInput,
        query: Query,
        asked: &mut Option<record::Asked>,
    ) -> Result<Decision, Refusal> {
        let engine = &self.engine;
        let entities = engine.entities_as(snapshot, entities, self.entities_mode(call))?;
        if entities.sent_none() {
            return engine.decide_stored(snapshot, query);
        }
        record::note_entities(asked, &entities);
        let request = engine.request(snapshot, query)?;
        let store = engine.store(snapshot, entities, std::slice::from_ref(&request))?;
        Ok(engine.decide_request(snapshot, &store, &request))
    }

    /// Decides the questions of one batch call, all against `snapshot` and one entity
    /// store built from the call's `entities` and what every item can reach, and reports
    /// the answers. A refused item refuses the whole call, naming it (`items[3]…`); more
    /// than `max_batch_items` are refused before any is looked at.
    pub fn decide_batch(
        &self,
        call: &Call,
        snapshot: &Snapshot,
        entities: Result<EntitiesInput, Refusal>,
        items: impl ExactSizeIterator<Item = Result<Question, Refusal>>,
    ) -> Result<Vec<Decision>, Refusal> {
        // A batch refused for its size (below) is not copied for the shadow set.
        let mut shadowed = match &entities {
            Ok(entities) if items.len() <= self.max_batch_items => self.shadow_draw(call, entities),
            _ => None,
        };
        let span = decide_span(snapshot);
        let decided = span.in_scope(|| self.batch(call, snapshot, entities, items, &mut shadowed));
        if let Ok((decisions, _)) = &decided {
            note_decisions(&span, decisions);
        }
        match decided {
            Ok((decisions, asked)) => {
                if let (Some(shadow), Some(mut pending)) = (&self.shadow, shadowed) {
                    for (at, decision) in decisions.iter().enumerate() {
                        pending.answered_at(at, Ok(decision), snapshot);
                    }
                    shadow.submit(pending);
                }
                self.record_decisions(call, snapshot, decisions.iter().zip(asked), true);
                Ok(decisions)
            }
            Err(refusal) => {
                self.record_refusal(call, &refusal, None, Some(snapshot));
                Err(refusal)
            }
        }
    }

    /// Reports a call the front end refused itself, before deciding: one it could not
    /// turn into a question (no principal, an unmappable check), or whose `question` it
    /// could not answer on its wire (ext_authz: an upstream header that would be
    /// invalid).
    pub fn refuse(
        &self,
        call: &Call,
        snapshot: &Snapshot,
        refusal: &Refusal,
        question: Option<Question>,
    ) {
        let asked = question.and_then(|q| self.asked(&q.query, q.recorded_context));
        self.record_refusal(call, refusal, asked, Some(snapshot));
    }

    /// Decides the questions of one call each on its own, in order, against `snapshot`
    /// and the stored entities alone (AuthZEN evaluations): an item that cannot be asked
    /// is answered alone with its refusal, the others are decided. After each answer,
    /// `go_on(allowed)` says whether to decide the next (a refusal counts as a deny).
    /// More than `max_batch_items` are refused before any is looked at. Every answer is
    /// reported, a refused item audited as the deny its caller sees.
    pub fn decide_each(
        &self,
        call: &Call,
        snapshot: &Snapshot,
        items: Vec<Result<Question, Refusal>>,
        go_on: impl Fn(bool) -> bool,
    ) -> Result<Vec<Result<Decision, Refusal>>, Refusal> {
        if items.len() > self.max_batch_items {
            let refusal = Refusal::limit(
                "evaluations",
                format!(
                    "{} evaluations is more than the limit of {} (max_batch_items)",
                    items.len(),
                    self.max_batch_items
                ),
            );
            self.record_refusal(call, &refusal, None, Some(snapshot));
            return Err(refusal);
        }
        let mut shadowed = self.shadow_draw(call, &EntitiesInput::default());
        let span = decide_span(snapshot);
        let _deciding = span.enter();
        let mut answers = Vec::with_capacity(items.len());
        let mut asked = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            if let Err(refusal) = call.past_deadline() {
                self.record_refusal(call, &refusal, None, Some(snapshot));
                return Err(refusal);
            }
            let mut shadow_asked = false;
            let answer = item.and_then(|question| {
                if let Some(pending) = &mut shadowed {
                    pending.ask(Some(i), &question);
                    shadow_asked = true;
                }
                asked.push(self.asked(&question.query, question.recorded_context));
                self.engine.decide_stored(snapshot, question.query)
            });
            if let Some(pending) = &mut shadowed
                && shadow_asked
            {
                pending.answered(answer.as_ref(), snapshot);
            }
            if asked.len() == i {
                asked.push(None);
            }
            let allowed = matches!(&answer, Ok(d) if d.allowed());
            answers.push(answer);
            if !go_on(allowed) {
                break;
            }
        }
        if !span.is_disabled() {
            let decisions: Vec<Decision> = answers.iter().filter_map(|a| a.clone().ok()).collect();
            note_decisions(&span, &decisions);
        }
        self.record_each(call, snapshot, &answers, asked);
        if let (Some(shadow), Some(pending)) = (&self.shadow, shadowed) {
            shadow.submit(pending);
        }
        Ok(answers)
    }

    #[allow(clippy::type_complexity)]
    fn batch(
        &self,
        call: &Call,
        snapshot: &Snapshot,
        entities: Result<EntitiesInput, Refusal>,
        items: impl ExactSizeIterator<Item = Result<Question, Refusal>>,
        shadowed: &mut Option<shadow::Pending>,
    ) -> Result<(Vec<Decision>, Vec<Option<record::Asked>>), Refusal> {
        if items.len() > self.max_batch_items {
            return Err(Refusal::limit(
                "items",
                format!(
                    "{} items is more than the limit of {} (max_batch_items)",
                    items.len(),
                    self.max_batch_items
                ),
            ));
        }
        let entities = self
            .engine
            .entities_as(snapshot, entities?, self.entities_mode(call))?;
        // Without entities of its own, each item is decided (or found decided) alone.
        let stored_only = entities.sent_none();
        let mut requests = Vec::with_capacity(items.len());
        let mut decisions = Vec::with_capacity(if stored_only { items.len() } else { 0 });
        let mut asked = Vec::with_capacity(items.len());
        let mut checked = CheckedContexts::default();
        for (i, item) in items.enumerate() {
            let within = |e: Refusal| e.within(&format!("items[{i}]"));
            let question = item.map_err(within)?;
            if let Some(pending) = shadowed {
                pending.ask(Some(i), &question);
            }
            let mut item_asked = self.asked(&question.query, question.recorded_context);
            record::note_entities(&mut item_asked, &entities);
            asked.push(item_asked);
            if stored_only {
                let decision = self.engine.decide_stored(snapshot, question.query);
                decisions.push(decision.map_err(within)?);
            } else {
                let request = self
                    .engine
                    .request_among(snapshot, question.query, &mut checked);
                requests.push(request.map_err(within)?);
            }
        }
        if stored_only {
            return Ok((decisions, asked));
        }
        // One store for every item: built from what all of them can reach.
        let store = self.engine.store(snapshot, entities, &requests)?;
        let decisions = requests
            .iter()
            .map(|request| self.engine.decide_request(snapshot, &store, request))
            .collect();
        Ok((decisions, asked))
    }
}

/// The span of deciding one call's questions on `snapshot` (a child of the call's span):
/// debug level, so it costs nothing unless traces are exported.
fn decide_span(snapshot: &Snapshot) -> tracing::Span {
    tracing::debug_span!(
        "decide",
        policy_version = snapshot.version(),
        decision = tracing::field::Empty,
        determining_policies = tracing::field::Empty,
        policies_evaluated = tracing::field::Empty,
        items = tracing::field::Empty,
        allowed = tracing::field::Empty,
        reused = tracing::field::Empty,
    )
}

/// Writes what `decisions` came to on their `span`: for one, its outcome, the policies
/// that determined it and whether it came from the decision cache; for many, how many
/// there were and how many allowed; and the policies evaluated in all.
fn note_decisions(span: &tracing::Span, decisions: &[Decision]) {
    if span.is_disabled() {
        return;
    }
    // A decision from the cache evaluated nothing this time.
    let evaluated: usize = decisions
        .iter()
        .filter(|d| !d.reused())
        .map(Decision::policies_evaluated)
        .sum();
    span.record("policies_evaluated", evaluated);
    match decisions {
        [one] => {
            span.record("decision", one.effect().label());
            span.record("reused", one.reused());
            span.record(
                "determining_policies",
                one.determining_policies().join(",").as_str(),
            );
        }
        many => {
            span.record("items", many.len());
            span.record("allowed", many.iter().filter(|d| d.allowed()).count());
        }
    }
}

#[cfg(test)]
mod tests;
