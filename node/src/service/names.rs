//! Names: a resource with one holder and a value (the registry and leader election); the
//! holder may `proclaim` a new value, and a read reports the vacancy it passed through.

use leasehold_api::error::{ApiError, ErrorCode};
use leasehold_api::validate;
use leasehold_api::wire::*;
use leasehold_raft::command::{Command, CommandResult, Kind};

use super::convert::{name_record, release_reason, sm_error, unexpected};
use super::resources::IntoAcquire;
use super::NodeService;

impl NodeService {
    pub(super) async fn register_name_impl(
        &self,
        name: &str,
        req: RegisterRequest,
    ) -> Result<NameRecord, ApiError> {
        validate::register(name, &req, &self.limits)?;
        let hold = self.acquire(req.into_acquire(name)).await?;
        let ttl = hold.ttl_ms;
        Ok(name_record(hold, Some(ttl)))
    }

    pub(super) async fn get_name_impl(
        &self,
        name: &str,
        params: ReadParams,
    ) -> Result<NameState, ApiError> {
        let view = self.read_resource(Kind::Name, name, &params).await?;
        let vacated = view.last_end.map(|e| Vacancy {
            owner: e.owner,
            token: e.token,
            reason: release_reason(e.reason),
            at_ms: e.at_ms,
        });
        // A blocking query (index and wait_ms, as for every read) answers a vacant name
        // with its state; a plain read answers 404, like a read of a deleted resource.
        let blocking = params.wait_ms.is_some() && params.index.is_some();
        match view.holders.into_iter().next() {
            Some(h) => {
                let remaining = self
                    .expires_in(vec![h.lease_id], params.stale.unwrap_or(false))
                    .await;
                let record = name_record(h, remaining.first().copied().flatten());
                Ok(NameState {
                    name: name.to_string(),
                    registered: true,
                    record: Some(record.into()),
                    vacated,
                    queue: view.queue,
                    index: view.index,
                })
            }
            None if blocking => Ok(NameState {
                name: name.to_string(),
                registered: false,
                record: None,
                vacated,
                queue: view.queue,
                index: view.index,
            }),
            None => Err(ApiError::new(
                ErrorCode::NameNotFound,
                format!("name {name:?} is not registered"),
            )),
        }
    }

    pub(super) async fn proclaim_impl(
        &self,
        name: &str,
        req: ProclaimRequest,
    ) -> Result<NameRecord, ApiError> {
        validate::proclaim(name, &req, &self.limits)?;
        let command = Command::SetValue {
            kind: Kind::Name,
            key: name.to_string(),
            owner: req.owner,
            token: req.token,
            value: req.value,
        };
        match self.write(req.request_id, command).await? {
            CommandResult::ValueSet(hold) => {
                let ttl = hold.ttl_ms;
                Ok(name_record(hold, Some(ttl)))
            }
            CommandResult::Error(e) => Err(sm_error(Kind::Name, name, e)),
            other => Err(unexpected(other)),
        }
    }

    /// A keepalive of the name's lease (names take no new TTL on extend).
    pub(super) async fn extend_name_impl(
        &self,
        name: &str,
        req: NameExtendRequest,
    ) -> Result<ExtendResponse, ApiError> {
        validate::name_extend(name, &req, &self.limits)?;
        let extend = ExtendRequest {
            owner: req.owner,
            token: req.token,
            ttl_ms: None,
            // A name extend is a keepalive (no log entry), idempotent by nature; the id
            // is checked and accepted.
            request_id: req.request_id,
        };
        self.extend(Kind::Name, name, &extend).await
    }

    pub(super) async fn list_names_impl(&self, params: ListParams) -> Result<NameList, ApiError> {
        let (views, next_after) = self.list_held(Kind::Name, &params).await?;
        let remaining = self
            .expires_in(views.iter().map(|v| v.lease_id).collect(), false)
            .await;
        let names = views
            .into_iter()
            .zip(remaining)
            .map(|(v, rem)| name_record(v, rem))
            .collect();
        Ok(NameList { names, next_after })
    }
}
