//! Search (AuthZEN's subject, resource and action search): which stored entities of a
//! type, or which actions, a question allows, one page at a time, at a bounded cost.
//!
//! Candidates come from indexes, never from evaluating every entity blindly: the policy
//! index gives where the permits that can match the fixed side of the question let an
//! entity in (`principal == E`, `principal in G`, or anything), and the snapshot's
//! [`Members`](crate::policy::Members) index gives the stored entities of the searched
//! type under those anchors, in a stable order (by id). Each candidate is then decided in
//! full (forbids included) exactly as an evaluation of it would be, so every result, fed
//! back as an evaluation, is allowed. A page ends when it is full, when the candidates
//! run out, or when it has evaluated `max_evaluations` candidates; its cursor is the id of
//! the last candidate looked at, so the next page goes on from there, whatever reloads
//! happened in between, with no repeats.

use cedar_policy::{EntityTypeName, EntityUid};

use super::{Call, Decider, Query, Refusal};
use crate::{
    engine::ContextInput,
    policy::{Anchor, SearchSide, Snapshot, search_order},
};

/// What is searched for.
#[derive(Debug, Clone)]
pub enum Searched {
    /// Principals of this type that may do `action` on `resource`.
    Principals {
        /// The searched type.
        of_type: EntityTypeName,
        /// The action.
        action: EntityUid,
        /// The resource.
        resource: EntityUid,
    },
    /// Resources of this type `principal` may `action`.
    Resources {
        /// The principal.
        principal: EntityUid,
        /// The action.
        action: EntityUid,
        /// The searched type.
        of_type: EntityTypeName,
    },
    /// Actions (of the action type `action_type`) `principal` may do on `resource`.
    Actions {
        /// The principal.
        principal: EntityUid,
        /// The resource.
        resource: EntityUid,
        /// The type actions are of (`Action`, or `NS::Action`).
        action_type: EntityTypeName,
    },
}

/// What a search asked, as its audit record writes it: the side searched, and the fixed
/// sides as `Type::"id"` with the searched one as its type.
#[derive(Debug)]
pub(super) struct SearchAsked {
    pub(super) searched: &'static str,
    pub(super) principal: String,
    pub(super) action: String,
    pub(super) resource: String,
}

impl SearchAsked {
    fn of(searched: &Searched) -> Self {
        match searched {
            Searched::Principals {
                of_type,
                action,
                resource,
            } => Self {
                searched: "subject",
                principal: of_type.to_string(),
                action: action.to_string(),
                resource: resource.to_string(),
            },
            Searched::Resources {
                principal,
                action,
                of_type,
            } => Self {
                searched: "resource",
                principal: principal.to_string(),
                action: action.to_string(),
                resource: of_type.to_string(),
            },
            Searched::Actions {
                principal,
                resource,
                action_type,
            } => Self {
                searched: "action",
                principal: principal.to_string(),
                action: action_type.to_string(),
                resource: resource.to_string(),
            },
        }
    }
}

/// Fits a search's context to one action (on a snapshot).
pub type FitContext = Box<dyn Fn(&Snapshot, &EntityUid) -> ContextInput + Send>;

/// The context candidates are decided in.
pub enum SearchContext {
    /// The same for every candidate (the action is fixed).
    Fixed(ContextInput),
    /// Fitted to each action asked (an action search: actions declare different
    /// contexts).
    PerAction(FitContext),
}

impl std::fmt::Debug for SearchContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Fixed(context) => f.debug_tuple("Fixed").field(context).finish(),
            Self::PerAction(_) => f.write_str("PerAction"),
        }
    }
}

/// Where a search goes on. It names no candidate the caller was not given: a position in
/// the candidates of one policy version, and the last result returned (which the caller
/// saw) to go on after when the version has changed since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// The policy version the position is in.
    pub version: String,
    /// The position of the next candidate to look at.
    pub position: usize,
    /// The id of the last result returned so far, if any.
    pub after: Option<String>,
}

/// One page of a search.
#[derive(Debug)]
pub struct SearchRequest {
    /// What is searched.
    pub searched: Searched,
    /// The context candidates are decided in.
    pub context: SearchContext,
    /// Where to go on (from the previous page's cursor); `None`: the first page.
    pub resume: Option<Cursor>,
    /// Most results in the page.
    pub limit: usize,
    /// Most candidates this page may evaluate.
    pub max_evaluations: usize,
    /// Work out `total` when there are at most this many candidates in all.
    pub total_up_to: usize,
}

/// One page of results.
#[derive(Debug, Clone, Default)]
pub struct SearchPage {
    /// The allowed entities (or actions), in order.
    pub found: Vec<EntityUid>,
    /// Where the next page starts; `None`: there is nothing after this page.
    pub next: Option<Cursor>,
    /// How many candidates in all are allowed, when the page could afford to count them.
    pub total: Option<usize>,
    /// Candidates evaluated.
    pub evaluated: usize,
}

impl Decider {
    /// Answers one page of `request` against `snapshot` and the stored entities, counting
    /// the call. A question that cannot be asked at all (a context that does not fit the
    /// schema, an unknown type) is refused; an action whose declaration does not fit the
    /// question is only not found.
    pub fn search(
        &self,
        call: &Call,
        snapshot: &Snapshot,
        request: SearchRequest,
    ) -> Result<SearchPage, Refusal> {
        let asked = self
            .telemetry
            .audit
            .enabled()
            .then(|| SearchAsked::of(&request.searched));
        let span = super::decide_span(snapshot);
        let page = span.in_scope(|| self.search_page(call, snapshot, request));
        if let Ok(page) = &page {
            span.record("items", page.evaluated);
            span.record("allowed", page.found.len());
        }
        let metrics = &self.telemetry.metrics;
        metrics.call_took(call.api, call.started.elapsed());
        if let Err(refusal) = &page {
            metrics.refused(call.api, refusal.reason());
            tracing::debug!(field = refusal.field(), "search refused");
        }
        if let Some(asked) = asked {
            self.record_search(call, snapshot, asked, &page);
        }
        page
    }

    fn search_page(
        &self,
        call: &Call,
        snapshot: &Snapshot,
        mut request: SearchRequest,
    ) -> Result<SearchPage, Refusal> {
        // A context shared by every candidate is read (and checked) once, not once each.
        if let (
            SearchContext::Fixed(ContextInput::Json(json)),
            Searched::Principals { action, .. } | Searched::Resources { action, .. },
        ) = (&request.context, &request.searched)
        {
            let context = self.engine.context(snapshot, json, action)?;
            request.context = SearchContext::Fixed(ContextInput::Value(context));
        }
        let members = snapshot.members();
        let (anchored, of_type) = match &request.searched {
            Searched::Actions { action_type, .. } => {
                let actions = members.actions().iter();
                let of_type = actions.filter(|a| a.type_name() == action_type);
                (Some(of_type.cloned().collect()), None)
            }
            Searched::Principals {
                of_type,
                action,
                resource,
            } => {
                let anchors = snapshot.index().search_anchors(
                    SearchSide::Principal,
                    of_type,
                    resource,
                    action,
                    snapshot.entities(),
                );
                (candidates(snapshot, of_type, anchors), Some(of_type))
            }
            Searched::Resources {
                principal,
                action,
                of_type,
            } => {
                let anchors = snapshot.index().search_anchors(
                    SearchSide::Resource,
                    of_type,
                    principal,
                    action,
                    snapshot.entities(),
                );
                (candidates(snapshot, of_type, anchors), Some(of_type))
            }
        };
        let candidates: &[EntityUid] = match (&anchored, of_type) {
            (Some(anchored), _) => anchored,
            (None, Some(of_type)) => members.of_type(of_type),
            (None, None) => &[],
        };
        // The same version has the same candidates in the same order: go on from the
        // position. After a reload, go on after the last result returned (candidates looked
        // at since then are looked at again, under the new policies), or from the start.
        let start = match &request.resume {
            None => 0,
            Some(cursor) if cursor.version == snapshot.version() => {
                cursor.position.min(candidates.len())
            }
            Some(cursor) => cursor.after.as_deref().map_or(0, |after| {
                candidates.partition_point(|c| c.id().unescaped() <= after)
            }),
        };
        let returned_before = request.resume.as_ref().and_then(|c| c.after.clone());
        let cursor_at = |page: &SearchPage, position: usize| Cursor {
            version: snapshot.version().to_owned(),
            position,
            after: page
                .found
                .last()
                .map(|u| u.id().unescaped().to_owned())
                .or_else(|| returned_before.clone()),
        };
        let rest = &candidates[start..];
        let counting = request.resume.is_none()
            && candidates.len() <= request.total_up_to.min(request.max_evaluations);
        let mut page = SearchPage::default();
        let mut allowed_in_all = 0usize;
        for (i, candidate) in rest.iter().enumerate() {
            // Its caller was answered with a timeout: stop working for nobody.
            call.past_deadline()?;
            if !counting && page.evaluated >= request.max_evaluations {
                // Out of budget: the next page goes on from this candidate.
                page.next = Some(cursor_at(&page, start + i));
                break;
            }
            page.evaluated += 1;
            if !self.allows(snapshot, &request, candidate)? {
                continue;
            }
            allowed_in_all += 1;
            if page.found.len() < request.limit {
                page.found.push(candidate.clone());
                continue;
            }
            // Allowed past a full page: there is a next page, from this candidate.
            if page.next.is_none() {
                page.next = Some(cursor_at(&page, start + i));
            }
            if !counting {
                break;
            }
        }
        if counting {
            page.total = Some(allowed_in_all);
        }
        Ok(page)
    }

    /// Whether `candidate` is allowed in `request`'s question. For subjects and
    /// resources a question that cannot be asked is refused (it would be refused for every
    /// candidate alike); for actions it only means that action is not allowed.
    fn allows(
        &self,
        snapshot: &Snapshot,
        request: &SearchRequest,
        candidate: &EntityUid,
    ) -> Result<bool, Refusal> {
        let (principal, action, resource) = match &request.searched {
            Searched::Principals {
                action, resource, ..
            } => (candidate.clone(), action.clone(), resource.clone()),
            Searched::Resources {
                principal, action, ..
            } => (principal.clone(), action.clone(), candidate.clone()),
            Searched::Actions {
                principal,
                resource,
                ..
            } => (principal.clone(), candidate.clone(), resource.clone()),
        };
        let context = match &request.context {
            SearchContext::Fixed(context) => context.clone(),
            SearchContext::PerAction(fit) => fit(snapshot, &action),
        };
        let query = Query {
            principal,
            action,
            resource,
            context,
        };
        match self.engine.request(snapshot, query) {
            Ok(built) => Ok(self
                .engine
                .decide_request(snapshot, &snapshot.entities().into(), &built)
                .allowed()),
            Err(_) if matches!(request.searched, Searched::Actions { .. }) => Ok(false),
            Err(refusal) => Err(refusal),
        }
    }
}

/// The stored entities of type `of_type` under `anchors`, in order; `None` for every
/// entity of the type (an anchor lets any entity in, or the index cannot say).
fn candidates(
    snapshot: &Snapshot,
    of_type: &EntityTypeName,
    anchors: Option<Vec<Anchor>>,
) -> Option<Vec<EntityUid>> {
    let anchors = anchors?;
    if anchors.contains(&Anchor::Any) {
        return None;
    }
    let members = snapshot.members();
    let stored = |uid: &EntityUid| snapshot.entities().get(uid).is_some();
    let mut found: Vec<EntityUid> = Vec::new();
    for anchor in anchors {
        let (Anchor::Eq(e) | Anchor::In(e)) = &anchor else {
            continue;
        };
        if e.type_name() == of_type && stored(e) {
            found.push(e.clone());
        }
        if let Anchor::In(e) = &anchor {
            found.extend(
                members
                    .within(e)
                    .iter()
                    .filter(|u| u.type_name() == of_type)
                    .cloned(),
            );
        }
    }
    found.sort_by(search_order);
    found.dedup();
    Some(found)
}
