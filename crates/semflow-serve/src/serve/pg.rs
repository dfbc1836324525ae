//! The Postgres wire protocol front end: `psql`, drivers and GUI clients run semflow SQL
//! (`embed`, `rerank`, vector search over Lance tables…) on the engine's own session, through
//! datafusion-postgres (simple and extended query protocols, `pg_catalog` for `\d` and
//! clients' table lists). semflow adds: SQLSTATE codes for DataFusion errors, `CREATE INDEX`
//! for Lance tables, SCRAM-SHA-256 password authentication (with channel binding over TLS),
//! and TLS (`sslmode=require`), which clients on other machines must use when it is on.

use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::common::ParamValues;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::Statement;
use datafusion_postgres::hooks::{HookClient, QueryHook};
use datafusion_postgres::pgwire;
use datafusion_postgres::{DfSessionService, Parser};
use futures::{Sink, StreamExt};
use pgwire::api::auth::sasl::scram::{gen_salted_password, ScramAuth, SCRAM_ITERATIONS};
use pgwire::api::auth::sasl::SASLAuthStartupHandler;
use pgwire::api::auth::{
    finish_authentication, protocol_negotiation, save_startup_parameters_to_metadata, AuthSource,
    DefaultServerParameterProvider, LoginInfo, Password, StartupHandler,
};
use pgwire::api::portal::Portal;
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{Response, Tag};
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, PgWireServerHandlers};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};

use super::access::Listener;
use crate::error::{datafusion_message, Error, Result};

/// Postgres listener settings: the secret is the password every client must give (any user
/// name); TLS serves clients that ask for it (`sslmode=require`).
pub type PgOptions = Listener;

/// Refuses a non-loopback address without a password or without TLS unless explicitly
/// allowed.
pub fn check_exposure(options: &PgOptions) -> Result<()> {
    options.check_exposure(
        "--pg-addr",
        "set a password (SEMFLOW_PG_PASSWORD or --pg-password)",
    )
}

fn user_error(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".to_string(),
        code.to_string(),
        message,
    )))
}

/// Gives DataFusion errors their SQLSTATE (datafusion-postgres reports them all as XX000).
fn with_sqlstate(e: PgWireError) -> PgWireError {
    match e {
        PgWireError::ApiError(inner) => {
            if let Some(df) = inner.downcast_ref::<DataFusionError>() {
                user_error(super::sqlstate::of_datafusion(df), datafusion_message(df))
            } else if inner
                .downcast_ref::<datafusion::sql::sqlparser::parser::ParserError>()
                .is_some()
            {
                user_error("42601", inner.to_string())
            } else {
                user_error("XX000", inner.to_string())
            }
        }
        other => other,
    }
}

/// Returns vector columns of query results as variable-length lists. arrow-pg 0.15 encodes
/// `FixedSizeList` (what `embed()` returns) by downcasting to `ListArray` and panics; the
/// client sees the same `real[]` either way. Only a query's output changes: tables created
/// from queries (CTAS, INSERT) keep fixed-size vectors.
#[derive(Debug)]
pub struct VarlenVectorsRule;

// An analyzer rule, not an optimizer rule: optimizer rules must keep the plan's schema.
impl datafusion::optimizer::AnalyzerRule for VarlenVectorsRule {
    fn name(&self) -> &str {
        "semflow_pg_varlen_vectors"
    }

    fn analyze(
        &self,
        plan: LogicalPlan,
        _config: &datafusion::config::ConfigOptions,
    ) -> datafusion::common::Result<LogicalPlan> {
        use datafusion::arrow::datatypes::{DataType, Field};
        use datafusion::logical_expr::{cast, Expr, Projection};
        if matches!(
            plan,
            LogicalPlan::Dml(_)
                | LogicalPlan::Ddl(_)
                | LogicalPlan::Copy(_)
                | LogicalPlan::Explain(_)
                | LogicalPlan::Analyze(_)
                | LogicalPlan::Statement(_)
                | LogicalPlan::DescribeTable(_)
        ) || !plan
            .schema()
            .fields()
            .iter()
            .any(|f| matches!(f.data_type(), DataType::FixedSizeList(..)))
        {
            return Ok(plan);
        }
        let exprs: Vec<Expr> = plan
            .schema()
            .iter()
            .map(|(q, f)| {
                let column = Expr::Column(datafusion::common::Column::new(q.cloned(), f.name()));
                match f.data_type() {
                    DataType::FixedSizeList(item, _) => cast(
                        column,
                        DataType::List(std::sync::Arc::new(Field::new_list_field(
                            item.data_type().clone(),
                            true,
                        ))),
                    )
                    .alias_qualified(q.cloned(), f.name()),
                    _ => column,
                }
            })
            .collect();
        let projection = Projection::try_new(exprs, Arc::new(plan))?;
        Ok(LogicalPlan::Projection(projection))
    }
}

/// `CREATE INDEX … USING ivf_pq|ivf_flat (col)` on Lance tables, as in `semflow sql`.
struct CreateIndexHook;

#[async_trait]
impl QueryHook for CreateIndexHook {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        session_context: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        let Statement::CreateIndex(create) = statement else {
            return None;
        };
        Some(
            crate::index::create::create_index(session_context, create)
                .await
                .map(|_| Response::Execution(Tag::new("CREATE INDEX")))
                .map_err(|e| user_error("XX000", e.to_string())),
        )
    }

    async fn handle_extended_parse_query(
        &self,
        _sql: &Statement,
        _session_context: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        None
    }

    async fn handle_extended_query(
        &self,
        _statement: &Statement,
        _logical_plan: &LogicalPlan,
        _params: &ParamValues,
        _session_context: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        None
    }
}

/// datafusion-postgres's session service with SQLSTATEs on its errors and admission control.
struct Service {
    inner: DfSessionService,
    admission: super::admission::Admission,
}

impl Service {
    async fn admit(&self) -> PgWireResult<Arc<super::admission::Permit>> {
        self.admission
            .enter("postgres")
            .await
            .map(Arc::new)
            .map_err(|refused| user_error("53000", refused.to_string()))
    }
}

/// Keeps `permit` until the rows of `response` have been sent: rows are computed (and
/// `embed()` runs) while pgwire reads the stream, after `do_query` returned.
fn hold(response: Response, permit: &Arc<super::admission::Permit>) -> Response {
    match response {
        Response::Query(mut query) => {
            let permit = permit.clone();
            let rows = std::mem::replace(&mut query.data_rows, Box::pin(futures::stream::empty()));
            query.data_rows = Box::pin(rows.map(move |row| {
                let _held = &permit;
                row
            }));
            Response::Query(query)
        }
        other => other,
    }
}

#[async_trait]
impl SimpleQueryHandler for Service {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let permit = self.admit().await?;
        let responses = SimpleQueryHandler::do_query(&self.inner, client, query)
            .await
            .map_err(with_sqlstate)?;
        Ok(responses.into_iter().map(|r| hold(r, &permit)).collect())
    }
}

#[async_trait]
impl ExtendedQueryHandler for Service {
    type Statement = <DfSessionService as ExtendedQueryHandler>::Statement;
    type QueryParser = Parser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        self.inner.query_parser()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
        max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let permit = self.admit().await?;
        let response = ExtendedQueryHandler::do_query(&self.inner, client, portal, max_rows)
            .await
            .map_err(with_sqlstate)?;
        Ok(hold(response, &permit))
    }
}

/// The one password, stored as SCRAM keeps it: salted and hashed once at start-up.
#[derive(Debug)]
struct ScramPassword {
    salt: Vec<u8>,
    salted: Vec<u8>,
}

impl ScramPassword {
    fn new(password: &str) -> Self {
        let salt = rand::random::<[u8; 16]>().to_vec();
        let salted = gen_salted_password(password, &salt, SCRAM_ITERATIONS);
        Self { salt, salted }
    }
}

#[async_trait]
impl AuthSource for ScramPassword {
    async fn get_password(&self, _login: &LoginInfo) -> PgWireResult<Password> {
        Ok(Password::new(Some(self.salt.clone()), self.salted.clone()))
    }
}

/// How a connection authenticates: trust without a password (loopback by default), SCRAM-
/// SHA-256 with one. Either way, a client on another machine must have come over TLS when
/// TLS is on. One per connection: the SCRAM exchange keeps state.
struct Startup {
    scram: Option<SASLAuthStartupHandler<DefaultServerParameterProvider>>,
    require_tls: bool,
}

impl Startup {
    fn new(password: Option<&Arc<ScramPassword>>, tls: Option<&crate::tls::ServerTls>) -> Self {
        let scram = password.map(|p| {
            let mut auth = ScramAuth::new(p.clone());
            auth.set_iterations(SCRAM_ITERATIONS);
            if let Some(tls) = tls {
                // Offers SCRAM-SHA-256-PLUS, binding the exchange to this certificate.
                if let Err(e) = auth.configure_certificate(tls.cert_pem()) {
                    tracing::warn!("postgres: no SCRAM channel binding: {e}");
                }
            }
            SASLAuthStartupHandler::new(Arc::new(DefaultServerParameterProvider::default()))
                .with_scram(auth)
        });
        Self {
            scram,
            require_tls: tls.is_some(),
        }
    }
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if let PgWireFrontendMessage::Startup(_) = &message {
            if self.require_tls && !client.is_secure() && !client.socket_addr().ip().is_loopback() {
                return Err(user_error(
                    "28000",
                    "this server requires TLS from other machines: connect with sslmode=require"
                        .into(),
                ));
            }
        }
        match &self.scram {
            Some(scram) => scram.on_startup(client, message).await,
            None => {
                if let PgWireFrontendMessage::Startup(ref startup) = message {
                    protocol_negotiation(client, startup).await?;
                    save_startup_parameters_to_metadata(client, startup);
                    finish_authentication(client, &DefaultServerParameterProvider::default())
                        .await?;
                }
                Ok(())
            }
        }
    }
}

struct Handlers {
    service: Arc<Service>,
    startup: Arc<Startup>,
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.service.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.service.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.startup.clone()
    }
}

/// Serves `engine` on the Postgres protocol until `shutdown` resolves; `on_bound` gets the
/// address actually bound (port 0 picks a free one). The protocol's planner rule and `SET`s
/// live in a session of its own (tables are shared with the other front ends).
pub async fn serve(
    engine: &crate::Engine,
    options: PgOptions,
    shutdown: impl std::future::Future<Output = ()>,
    on_bound: impl FnOnce(SocketAddr),
) -> Result<()> {
    check_exposure(&options)?;
    let ctx = engine.fork_session();
    let catalog = ctx
        .catalog_names()
        .into_iter()
        .next()
        .unwrap_or_else(|| "datafusion".into());
    datafusion_postgres::datafusion_pg_catalog::setup_pg_catalog(
        &ctx,
        &catalog,
        datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider,
    )
    .map_err(|e| Error::InvalidArgument(format!("pg_catalog: {e}")))?;
    ctx.add_analyzer_rule(Arc::new(VarlenVectorsRule));
    let ctx = Arc::new(ctx);
    let hooks: Vec<Arc<dyn QueryHook>> = vec![
        Arc::new(CreateIndexHook),
        Arc::new(datafusion_postgres::hooks::cursor::CursorStatementHook),
        Arc::new(datafusion_postgres::hooks::set_show::SetShowHook),
        Arc::new(datafusion_postgres::hooks::transactions::TransactionStatementHook),
    ];
    let service = Arc::new(Service {
        inner: DfSessionService::new_with_hooks(ctx, hooks),
        admission: options.admission.clone(),
    });
    let password = options
        .secret
        .as_deref()
        .map(|p| Arc::new(ScramPassword::new(p)));
    let acceptor = options.tls.as_ref().map(|t| t.acceptor(&[b"postgresql"]));
    let (listener, bound) = options.bind().await?;
    on_bound(bound);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (socket, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!("postgres accept: {e}");
                        continue;
                    }
                };
                let handlers = Arc::new(Handlers {
                    service: service.clone(),
                    startup: Arc::new(Startup::new(password.as_ref(), options.tls.as_ref())),
                });
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Err(e) = pgwire::tokio::process_socket(socket, acceptor, handlers).await {
                        tracing::debug!("postgres connection from {peer}: {e}");
                    }
                });
            }
            _ = &mut shutdown => break,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposure_needs_a_password() {
        let o = |addr: &str, password: Option<&str>| PgOptions {
            addr: addr.parse().unwrap(),
            secret: password.map(String::from),
            ..PgOptions::default()
        };
        assert!(check_exposure(&o("127.0.0.1:5433", None)).is_ok());
        let err = check_exposure(&o("0.0.0.0:5433", None))
            .unwrap_err()
            .to_string();
        assert!(err.contains("SEMFLOW_PG_PASSWORD"), "{err}");
        let err = check_exposure(&o("0.0.0.0:5433", Some("pw")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--tls-cert"), "{err}");
        let mut no_tls = o("0.0.0.0:5433", Some("pw"));
        no_tls.insecure_no_tls = true;
        assert!(check_exposure(&no_tls).is_ok());
    }
}
