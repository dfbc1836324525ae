//! The Arrow Flight SQL front end (`--flight-addr`): ADBC, JDBC and pyarrow clients run
//! semflow SQL over gRPC and get Arrow record batches as the engine made them (vectors stay
//! `FixedSizeList<Float32>`). Built on arrow-flight's Flight SQL server trait.
//!
//! - A request is one statement, optionally preceded by `SET` statements that apply to it
//!   alone: every request plans in a session forked from this front end's, so one client's
//!   settings never reach another (Flight SQL has no connection to hang them on).
//! - Prepared statements are stateless: the handle carries the SQL and the bound parameters
//!   (one row, `$1` = first column), so any handle is good until the client drops it.
//! - Auth: with `--api-token` set, every call carries `authorization: Bearer TOKEN`, or
//!   `Basic` credentials whose password is the token (the handshake answers those with the
//!   bearer header, as ADBC's username/password option expects). TLS with `--tls-cert`.

use std::net::SocketAddr;
use std::pin::Pin;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt64Type};
use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, Any, CommandGetCatalogs, CommandGetDbSchemas,
    CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandPreparedStatementQuery,
    CommandPreparedStatementUpdate, CommandStatementQuery, CommandStatementUpdate,
    DoPutPreparedStatementResult, ProstMessageExt, SqlInfo, TicketStatementQuery,
};
use arrow_flight::{
    FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse, IpcMessage,
    SchemaAsIpc, Ticket,
};
use base64::Engine as _;
use datafusion::common::ParamValues;
use datafusion::execution::context::SessionContext;
use datafusion::scalar::ScalarValue;
use datafusion::sql::parser::Statement;
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use tonic::metadata::MetadataMap;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};

use super::access::{constant_time_eq, Listener, HOW_TO_SET_A_TOKEN};
use crate::engine::Planned;
use crate::error::{Error, Result};

/// Flight SQL listener settings: the secret is the bearer token every call must carry (the
/// HTTP API's token and TLS).
pub type FlightOptions = Listener;

/// Refuses to expose an unauthenticated or unencrypted listener beyond this machine.
pub fn check_exposure(options: &FlightOptions) -> Result<()> {
    options.check_exposure("--flight-addr", HOW_TO_SET_A_TOKEN)
}

/// Serves `engine` over Flight SQL until `shutdown` resolves; `on_bound` gets the address
/// actually bound (port 0 picks a free one).
pub async fn serve(
    engine: &crate::Engine,
    options: FlightOptions,
    shutdown: impl std::future::Future<Output = ()> + Send,
    on_bound: impl FnOnce(SocketAddr),
) -> Result<()> {
    check_exposure(&options)?;
    let service = FlightSql::new(
        engine.fork_session(),
        options.secret.clone(),
        options.admission.clone(),
    )?;
    let token = options.secret.clone();
    let service = FlightServiceServer::with_interceptor(service, move |request: Request<()>| {
        authorize(token.as_deref(), request.metadata())?;
        Ok(request)
    });
    let router = tonic::transport::Server::builder().add_service(service);
    let (listener, bound) = options.bind().await?;
    on_bound(bound);
    let served = match &options.tls {
        Some(tls) => {
            let listener = crate::tls::TlsListener::new(listener, tls.acceptor(&[b"h2"]))
                .map_err(|e| Error::io(bound.to_string(), e))?;
            let incoming = futures::stream::unfold(listener, |mut listener| async move {
                use axum::serve::Listener as _;
                let (stream, _) = listener.accept().await;
                Some((Ok::<_, std::io::Error>(stream), listener))
            });
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
        }
        None => {
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
        }
    };
    served.map_err(|e| Error::InvalidArgument(format!("flight sql on {bound}: {e}")))
}

/// Lets a call through with the right bearer token, or Basic credentials whose password is
/// the token; every call when no token is set.
fn authorize(token: Option<&str>, metadata: &MetadataMap) -> std::result::Result<(), Status> {
    let Some(token) = token else {
        return Ok(());
    };
    let given = metadata
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let password = if let Some(bearer) = given.strip_prefix("Bearer ") {
        Some(bearer.to_string())
    } else if let Some(basic) = given.strip_prefix("Basic ") {
        // Padded or not: the Go Flight client (ADBC) sends it unpadded.
        base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(basic.trim().trim_end_matches('='))
            .ok()
            .and_then(|raw| String::from_utf8(raw).ok())
            .and_then(|pair| pair.split_once(':').map(|(_, p)| p.to_string()))
    } else {
        None
    };
    match password {
        Some(p) if constant_time_eq(p.as_bytes(), token.as_bytes()) => Ok(()),
        _ => Err(Status::unauthenticated(
            "missing or wrong credentials: send `authorization: Bearer <token>` (or Basic with the token as password)",
        )),
    }
}

/// A prepared statement as the client holds it: the SQL and, once bound, its parameters
/// (an Arrow IPC stream of one row).
#[derive(Clone, PartialEq, prost::Message)]
struct Handle {
    #[prost(string, tag = "1")]
    sql: String,
    #[prost(bytes = "vec", optional, tag = "2")]
    parameters: Option<Vec<u8>>,
}

impl Handle {
    fn decode_from(bytes: &[u8]) -> std::result::Result<Self, Status> {
        Self::decode(bytes).map_err(|e| {
            Status::invalid_argument(format!("prepared statement handle: not semflow's ({e})"))
        })
    }

    /// The bound parameters as DataFusion values, if any were bound.
    fn bound(&self) -> std::result::Result<Option<ParamValues>, Status> {
        let Some(ipc) = &self.parameters else {
            return Ok(None);
        };
        let reader = arrow::ipc::reader::StreamReader::try_new(ipc.as_slice(), None)
            .map_err(|e| Status::invalid_argument(format!("parameters: {e}")))?;
        let batches = reader
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Status::invalid_argument(format!("parameters: {e}")))?;
        parameter_values(&batches).map(Some)
    }
}

/// Bound parameters → DataFusion's positional values: one row, `$1` is the first column.
fn parameter_values(batches: &[RecordBatch]) -> std::result::Result<ParamValues, Status> {
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let Some(batch) = batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .filter(|_| rows == 1)
    else {
        return Err(Status::invalid_argument(format!(
            "parameters: one row expected, got {rows} (bind and execute one row at a time)"
        )));
    };
    let values = batch
        .columns()
        .iter()
        .enumerate()
        .map(|(i, column)| {
            ScalarValue::try_from_array(column, 0)
                .map_err(|e| Status::invalid_argument(format!("parameter ${}: {e}", i + 1)))
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(ParamValues::from(values))
}

/// The parameter rows a client bound (DoPut's Arrow stream).
async fn bound_rows(
    request: Request<PeekableFlightDataStream>,
) -> std::result::Result<Vec<RecordBatch>, Status> {
    let flight_data = request.into_inner().map_err(FlightError::from);
    arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(flight_data)
        .try_collect()
        .await
        .map_err(|e| Status::invalid_argument(format!("parameters: {e}")))
}

/// Bound values cast to the types DataFusion inferred for their placeholders (an INSERT's
/// target columns, a comparison's other side): clients send what they have, e.g. `Utf8`
/// for a `Utf8View` column, and a value of the wrong type would reach the table as it is.
fn typed_like_placeholders(
    plan: &datafusion::logical_expr::LogicalPlan,
    values: ParamValues,
) -> std::result::Result<ParamValues, Status> {
    let ParamValues::List(mut list) = values else {
        return Ok(values);
    };
    let types = plan.get_parameter_types().map_err(|e| status(e.into()))?;
    for (i, value) in list.iter_mut().enumerate() {
        let name = format!("${}", i + 1);
        let Some(Some(want)) = types.get(&name) else {
            continue;
        };
        if value.value.data_type() != *want {
            value.value = value.value.cast_to(want).map_err(|e| {
                Status::invalid_argument(format!("parameter {name}: not a {want}: {e}"))
            })?;
        }
    }
    Ok(ParamValues::List(list))
}

/// A request's statement, planned in the request's own session.
struct Prepared {
    ctx: SessionContext,
    planned: Planned,
}

struct FlightSql {
    /// The front end's session; each request forks it.
    ctx: SessionContext,
    token: Option<String>,
    sql_info: SqlInfoData,
    admission: super::admission::Admission,
}

type DoGetStream = <FlightSql as FlightService>::DoGetStream;

impl FlightSql {
    fn new(
        ctx: SessionContext,
        token: Option<String>,
        admission: super::admission::Admission,
    ) -> Result<Self> {
        let mut info = SqlInfoDataBuilder::new();
        info.append(SqlInfo::FlightSqlServerName, "semflow");
        info.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
        // The Arrow IPC format version (Schema.fbs MetadataVersion V5).
        info.append(SqlInfo::FlightSqlServerArrowVersion, "1.5");
        info.append(SqlInfo::FlightSqlServerReadOnly, false);
        info.append(SqlInfo::FlightSqlServerSql, true);
        info.append(SqlInfo::FlightSqlServerSubstrait, false);
        info.append(SqlInfo::FlightSqlServerTransaction, 0i32);
        let sql_info = info
            .build()
            .map_err(|e| Error::InvalidArgument(format!("flight sql info: {e}")))?;
        Ok(Self {
            ctx,
            token,
            sql_info,
            admission,
        })
    }

    /// Plans `sql`: its `SET` statements apply to a fresh fork of this front end's session,
    /// the last statement is planned there (with `parameters` bound, when given).
    async fn prepare(
        &self,
        sql: &str,
        parameters: Option<ParamValues>,
    ) -> std::result::Result<Prepared, Status> {
        let mut statements = crate::Engine::parse(sql).map_err(status)?;
        let Some(last) = statements.pop() else {
            return Err(Status::invalid_argument("no statement"));
        };
        let ctx = crate::engine::fork(&self.ctx);
        for set in statements {
            if !is_set(&set) {
                return Err(Status::invalid_argument(format!(
                    "one statement per request (SET statements may precede it), got: {set}"
                )));
            }
            Planned::new(&ctx, set)
                .await
                .map_err(status)?
                .execute(&ctx)
                .await
                .map_err(status)?;
        }
        let planned = match (Planned::new(&ctx, last).await.map_err(status)?, parameters) {
            (Planned::Plan(plan), Some(values)) => {
                let values = typed_like_placeholders(&plan, values)?;
                let bound = plan
                    .with_param_values(values)
                    .map_err(|e| status(e.into()))?;
                Planned::Plan(Box::new(bound))
            }
            (planned, _) => planned,
        };
        Ok(Prepared { ctx, planned })
    }

    /// A slot in the server's shared budget, or RESOURCE_EXHAUSTED at once.
    async fn admit(&self) -> std::result::Result<super::admission::Permit, Status> {
        self.admission
            .enter("flight")
            .await
            .map_err(|refused| Status::resource_exhausted(format!("{refused} (SQLSTATE 53000)")))
    }

    /// Runs a prepared request and streams its rows as Flight data, declared with the schema
    /// the plan advertised (the physical stream may differ in nullability, and strict clients
    /// such as ADBC compare).
    async fn stream(
        &self,
        prepared: Prepared,
    ) -> std::result::Result<Response<DoGetStream>, Status> {
        let schema = prepared.planned.schema();
        let permit = self.admit().await?;
        let (_, rows) = prepared
            .planned
            .execute(&prepared.ctx)
            .await
            .map_err(status)?;
        let declared = schema.clone();
        let rows = rows.map(move |batch| {
            // Held until the last batch is sent: rows are computed as the client reads.
            let _held = &permit;
            let batch = batch.map_err(|e| FlightError::ExternalError(Box::new(e)))?;
            conform(&declared, batch).map_err(FlightError::Arrow)
        });
        Ok(Response::new(encode(schema, rows)))
    }

    /// Runs a prepared request to the end; the rows it changed (DML) or -1 (unknown).
    async fn update(&self, prepared: Prepared) -> std::result::Result<i64, Status> {
        let _permit = self.admit().await?;
        let (_, rows) = prepared
            .planned
            .execute(&prepared.ctx)
            .await
            .map_err(status)?;
        let batches: Vec<RecordBatch> = rows.try_collect().await.map_err(|e| status(e.into()))?;
        Ok(changed_rows(&batches).unwrap_or(-1))
    }
}

/// `batch` in the declared `schema`'s types: the physical plan may pick another encoding of
/// the same values (e.g. `Utf8View` where the plan said `Utf8`), and clients concatenate
/// batches by the declared schema.
fn conform(schema: &SchemaRef, batch: RecordBatch) -> arrow::error::Result<RecordBatch> {
    if batch.schema().fields().len() != schema.fields().len()
        || batch
            .schema()
            .fields()
            .iter()
            .zip(schema.fields())
            .all(|(got, want)| got.data_type() == want.data_type())
    {
        return Ok(batch);
    }
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(column, field)| arrow::compute::cast(column, field.data_type()))
        .collect::<arrow::error::Result<Vec<_>>>()?;
    let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    RecordBatch::try_new_with_options(schema.clone(), columns, &options)
}

/// The `count` DataFusion's INSERT/UPDATE/DELETE return.
fn changed_rows(batches: &[RecordBatch]) -> Option<i64> {
    let mut total = 0i64;
    for batch in batches {
        if batch.num_columns() != 1 || batch.schema().field(0).name() != "count" {
            return None;
        }
        let counts = batch.column(0).as_primitive_opt::<UInt64Type>()?;
        total += counts.iter().flatten().sum::<u64>() as i64;
    }
    Some(total)
}

fn is_set(statement: &Statement) -> bool {
    use datafusion::sql::sqlparser::ast::Statement as Sql;
    matches!(statement, Statement::Statement(s) if matches!(s.as_ref(), Sql::Set(_)))
}

/// A semflow error as a gRPC status: user mistakes (SQL, plan, arguments) are
/// `INVALID_ARGUMENT` with their SQLSTATE, as the other front ends report them.
fn status(e: Error) -> Status {
    let code = super::sqlstate::of_error(&e);
    let message = format!("{} (SQLSTATE {code})", e.user_message());
    match code {
        "XX000" => Status::internal(message),
        "53000" => Status::resource_exhausted(message),
        "40001" => Status::aborted(message),
        _ => Status::invalid_argument(message),
    }
}

fn encode(
    schema: SchemaRef,
    batches: impl Stream<Item = std::result::Result<RecordBatch, FlightError>> + Send + 'static,
) -> DoGetStream {
    FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(batches)
        .map_err(Status::from)
        .boxed()
}

fn encode_batch(
    batch: std::result::Result<RecordBatch, impl std::fmt::Display>,
) -> std::result::Result<Response<DoGetStream>, Status> {
    let batch = batch.map_err(|e| Status::internal(e.to_string()))?;
    let schema = batch.schema();
    Ok(Response::new(encode(
        schema,
        futures::stream::once(async { Ok(batch) }),
    )))
}

fn ipc_schema(schema: &Schema) -> std::result::Result<prost::bytes::Bytes, Status> {
    let IpcMessage(bytes) = SchemaAsIpc::new(schema, &IpcWriteOptions::default())
        .try_into()
        .map_err(|e: arrow::error::ArrowError| Status::internal(e.to_string()))?;
    Ok(bytes)
}

/// A FlightInfo whose one endpoint's ticket is `ticket`, for rows of `schema`.
fn flight_info(
    descriptor: FlightDescriptor,
    schema: &Schema,
    ticket: Any,
) -> std::result::Result<Response<FlightInfo>, Status> {
    let endpoint = FlightEndpoint::new().with_ticket(Ticket::new(ticket.encode_to_vec()));
    let info = FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Status::internal(e.to_string()))?
        .with_endpoint(endpoint)
        .with_descriptor(descriptor);
    Ok(Response::new(info))
}

/// The parameter schema clients see: placeholders DataFusion could type get that type, the
/// others `Null` (any value binds; the function they feed checks it).
fn parameter_schema(planned: &Planned) -> std::result::Result<Schema, Status> {
    let Planned::Plan(plan) = planned else {
        return Ok(Schema::empty());
    };
    let mut types: Vec<(usize, String, DataType)> = plan
        .get_parameter_types()
        .map_err(|e| status(e.into()))?
        .into_iter()
        .map(|(name, t)| {
            let position = name.trim_start_matches('$').parse().unwrap_or(usize::MAX);
            (position, name, t.unwrap_or(DataType::Null))
        })
        .collect();
    types.sort();
    Ok(Schema::new(
        types
            .into_iter()
            .map(|(_, name, t)| Field::new(name, t, true))
            .collect::<Vec<_>>(),
    ))
}

#[tonic::async_trait]
impl FlightSqlService for FlightSql {
    type FlightService = FlightSql;

    /// Basic credentials (already checked by the interceptor) get the bearer header back.
    async fn do_handshake(
        &self,
        _request: Request<Streaming<HandshakeRequest>>,
    ) -> std::result::Result<
        Response<
            Pin<Box<dyn Stream<Item = std::result::Result<HandshakeResponse, Status>> + Send>>,
        >,
        Status,
    > {
        let token = self.token.clone().unwrap_or_default();
        let reply = HandshakeResponse {
            protocol_version: 0,
            payload: token.clone().into(),
        };
        let mut response: Response<Pin<Box<dyn Stream<Item = _> + Send>>> =
            Response::new(Box::pin(futures::stream::iter([Ok(reply)])));
        if !token.is_empty() {
            let bearer = format!("Bearer {token}")
                .parse()
                .map_err(|_| Status::internal("the API token is not a valid header value"))?;
            response.metadata_mut().insert("authorization", bearer);
        }
        Ok(response)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        let prepared = self.prepare(&query.query, None).await?;
        let ticket = TicketStatementQuery {
            statement_handle: query.query.into_bytes().into(),
        };
        flight_info(
            request.into_inner(),
            &prepared.planned.schema(),
            ticket.as_any(),
        )
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        _request: Request<arrow_flight::Ticket>,
    ) -> std::result::Result<Response<DoGetStream>, Status> {
        let sql = String::from_utf8(ticket.statement_handle.to_vec())
            .map_err(|_| Status::invalid_argument("statement ticket: not UTF-8 SQL"))?;
        let prepared = self.prepare(&sql, None).await?;
        self.stream(prepared).await
    }

    async fn do_put_statement_update(
        &self,
        command: CommandStatementUpdate,
        _request: Request<PeekableFlightDataStream>,
    ) -> std::result::Result<i64, Status> {
        let prepared = self.prepare(&command.query, None).await?;
        self.update(prepared).await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        _request: Request<arrow_flight::Action>,
    ) -> std::result::Result<ActionCreatePreparedStatementResult, Status> {
        let prepared = self.prepare(&query.query, None).await?;
        let handle = Handle {
            sql: query.query,
            parameters: None,
        };
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle.encode_to_vec().into(),
            dataset_schema: ipc_schema(&prepared.planned.schema())?,
            parameter_schema: ipc_schema(&parameter_schema(&prepared.planned)?)?,
        })
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> std::result::Result<DoPutPreparedStatementResult, Status> {
        let mut handle = Handle::decode_from(&query.prepared_statement_handle)?;
        let batches = bound_rows(request).await?;
        // Checked now, so a bad binding fails at bind time rather than at execution.
        parameter_values(&batches)?;
        let Some(schema) = batches.first().map(RecordBatch::schema) else {
            return Err(Status::invalid_argument("parameters: no rows"));
        };
        let ipc = crate::output::arrow_ipc_stream(&schema, &batches).map_err(status)?;
        handle.parameters = Some(ipc);
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(handle.encode_to_vec().into()),
        })
    }

    async fn get_flight_info_prepared_statement(
        &self,
        command: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        let handle = Handle::decode_from(&command.prepared_statement_handle)?;
        let prepared = self.prepare(&handle.sql, handle.bound()?).await?;
        flight_info(
            request.into_inner(),
            &prepared.planned.schema(),
            command.as_any(),
        )
    }

    async fn do_get_prepared_statement(
        &self,
        command: CommandPreparedStatementQuery,
        _request: Request<arrow_flight::Ticket>,
    ) -> std::result::Result<Response<DoGetStream>, Status> {
        let handle = Handle::decode_from(&command.prepared_statement_handle)?;
        let prepared = self.prepare(&handle.sql, handle.bound()?).await?;
        self.stream(prepared).await
    }

    async fn do_put_prepared_statement_update(
        &self,
        command: CommandPreparedStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> std::result::Result<i64, Status> {
        let handle = Handle::decode_from(&command.prepared_statement_handle)?;
        let batches = bound_rows(request).await?;
        // Several rows (executemany): one execution per row, their counts added up.
        if batches.iter().all(|b| b.num_rows() == 0) {
            let prepared = self.prepare(&handle.sql, handle.bound()?).await?;
            return self.update(prepared).await;
        }
        let mut changed = 0;
        for batch in &batches {
            for row in 0..batch.num_rows() {
                let values = parameter_values(&[batch.slice(row, 1)])?;
                let prepared = self.prepare(&handle.sql, Some(values)).await?;
                changed += self.update(prepared).await?.max(0);
            }
        }
        Ok(changed)
    }

    async fn do_action_close_prepared_statement(
        &self,
        _query: ActionClosePreparedStatementRequest,
        _request: Request<arrow_flight::Action>,
    ) -> std::result::Result<(), Status> {
        // Stateless handles: nothing is held on the server.
        Ok(())
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder(&self.sql_info).schema();
        flight_info(request.into_inner(), &schema, query.as_any())
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        _request: Request<arrow_flight::Ticket>,
    ) -> std::result::Result<Response<DoGetStream>, Status> {
        encode_batch(query.into_builder(&self.sql_info).build())
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        flight_info(request.into_inner(), &schema, query.as_any())
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        _request: Request<arrow_flight::Ticket>,
    ) -> std::result::Result<Response<DoGetStream>, Status> {
        let mut builder = query.into_builder();
        for catalog in self.ctx.catalog_names() {
            builder.append(catalog);
        }
        encode_batch(builder.build())
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        flight_info(request.into_inner(), &schema, query.as_any())
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        _request: Request<arrow_flight::Ticket>,
    ) -> std::result::Result<Response<DoGetStream>, Status> {
        let mut builder = query.into_builder();
        for catalog_name in self.ctx.catalog_names() {
            if let Some(catalog) = self.ctx.catalog(&catalog_name) {
                for schema in catalog.schema_names() {
                    builder.append(&catalog_name, schema);
                }
            }
        }
        encode_batch(builder.build())
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        flight_info(request.into_inner(), &schema, query.as_any())
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        _request: Request<arrow_flight::Ticket>,
    ) -> std::result::Result<Response<DoGetStream>, Status> {
        let mut builder = query.into_builder();
        for catalog_name in self.ctx.catalog_names() {
            let Some(catalog) = self.ctx.catalog(&catalog_name) else {
                continue;
            };
            for schema_name in catalog.schema_names() {
                let Some(schema) = catalog.schema(&schema_name) else {
                    continue;
                };
                for table_name in schema.table_names() {
                    let table = schema
                        .table(&table_name)
                        .await
                        .map_err(|e| status(e.into()))?;
                    let Some(table) = table else { continue };
                    let kind = match table.table_type() {
                        datafusion::datasource::TableType::View => "VIEW",
                        datafusion::datasource::TableType::Temporary => "LOCAL TEMPORARY",
                        datafusion::datasource::TableType::Base => "TABLE",
                    };
                    builder
                        .append(
                            &catalog_name,
                            &schema_name,
                            &table_name,
                            kind,
                            &table.schema(),
                        )
                        .map_err(|e| Status::internal(e.to_string()))?;
                }
            }
        }
        encode_batch(builder.build())
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        flight_info(request.into_inner(), &schema, query.as_any())
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        _request: Request<arrow_flight::Ticket>,
    ) -> std::result::Result<Response<DoGetStream>, Status> {
        let mut builder = query.into_builder();
        for kind in ["LOCAL TEMPORARY", "TABLE", "VIEW"] {
            builder.append(kind);
        }
        encode_batch(builder.build())
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use std::sync::Arc;

    #[test]
    fn credentials() {
        let with = |value: &str| {
            let mut m = MetadataMap::new();
            m.insert("authorization", value.parse().unwrap());
            m
        };
        assert!(authorize(None, &MetadataMap::new()).is_ok());
        assert!(authorize(Some("s3cret"), &with("Bearer s3cret")).is_ok());
        for engine in [
            base64::engine::general_purpose::STANDARD,
            base64::engine::general_purpose::STANDARD_NO_PAD,
        ] {
            let basic = engine.encode("anyone:s3cret");
            assert!(authorize(Some("s3cret"), &with(&format!("Basic {basic}"))).is_ok());
        }
        for wrong in ["Bearer s3creT", "s3cret", "Basic !!", "Bearer "] {
            let err = authorize(Some("s3cret"), &with(wrong)).unwrap_err();
            assert_eq!(err.code(), tonic::Code::Unauthenticated, "{wrong}");
        }
        let err = authorize(Some("s3cret"), &MetadataMap::new()).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn parameters_are_one_positional_row() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Utf8, true),
            Field::new("b", DataType::Int64, true),
        ]));
        let batch = |rows: usize| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from(vec!["x"; rows])),
                    Arc::new(Int64Array::from(vec![7; rows])),
                ],
            )
            .unwrap()
        };
        let values = parameter_values(&[batch(0), batch(1)]).unwrap();
        let ParamValues::List(values) = values else {
            panic!("positional values expected")
        };
        let values: Vec<ScalarValue> = values.into_iter().map(|v| v.value).collect();
        assert_eq!(
            values,
            vec![
                ScalarValue::Utf8(Some("x".into())),
                ScalarValue::Int64(Some(7))
            ]
        );
        for rows in [0, 2] {
            let err = parameter_values(&[batch(rows)]).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            assert!(err.message().contains(&format!("got {rows}")), "{err}");
        }
    }

    #[test]
    fn exposure() {
        let open = FlightOptions {
            addr: "0.0.0.0:50051".parse().unwrap(),
            ..FlightOptions::default()
        };
        let err = check_exposure(&open).unwrap_err().to_string();
        assert!(
            err.contains("--flight-addr") && err.contains("--api-token"),
            "{err}"
        );
        assert!(check_exposure(&FlightOptions::default()).is_ok());
    }
}
