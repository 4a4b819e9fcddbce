"""Celery settings that load here but have no effect, each with its reason.

This is the one table of such names.  A settings file moved over from
Celery loads with any of them set; the worker names those that were set in
one warning when it starts (:meth:`conveyor._config.Settings.no_effect_set`),
and docs/settings.md lists every entry with its reason.

Each entry keeps the kind of value Celery expects (so a wrong type is still
an error that names the key) and Celery's default (what ``app.conf[name]``
answers when the name was not set).  Read from Celery 5.6.2's
``celery/app/defaults.py``; the names are facts, the reasons are Conveyor's.

Entries marked ``# owned by slice X`` are implemented on another branch of
issue 14; they move out of this table when that branch lands.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class NoEffect:
    """A Celery setting accepted here without effect."""

    kind: str  # bool, int, float (non-negative seconds or a count), str, dict, list, any
    default: Any  # Celery's default
    reason: str


AMQP = ("AMQP topology: Conveyor reaches each queue by name (on RabbitMQ through the default "
        "exchange, in a topology of its own: ADR 0016), so Celery's exchanges, bindings and "
        "channel options do not apply")
QUEUE_TYPE = ("on RabbitMQ the work queues' type is broker_transport_options['queue_type'] "
              "(quorum by default, or classic); elsewhere queues have no type")
URL_PARTS = "the URL carries it: put it in broker_url (scheme://user:password@host:port/db)"
RESULT_URL_PARTS = ("the URL carries it: put it in result_backend "
                    "(redis://user:password@host:port/db)")
EVENTS = "events are always written to Conveyor's event store (read by the monitor), not to AMQP"
NO_CONTROL = ("remote control uses Conveyor's own channel beside the broker (conveyor/control/), "
              "not kombu exchanges and queues")
ALWAYS_CONTROL = ("every worker answers remote control "
                  "(its control thread holds one idle connection)")
IN_BROKER = "delayed tasks wait in the broker, not in a worker-side timer (guarantee 3)"
NO_COMPRESSION = "messages and results are not compressed; keep arguments small or pass ids"
NO_SIGNING = ("only used by Celery's 'auth' serializer (X.509 message signing); Conveyor signs "
              "with a shared HMAC key instead: message_signing_key or message_signing_key_file "
              "(docs/security.md); task_serializer='auth' is refused")
SQLALCHEMY = ("Celery's SQLAlchemy result backend setting: db+sqlite:/// and db+postgresql:// "
              "URLs map to Conveyor's SQLite and PostgreSQL stores, which manage their own "
              "connections and tables")


def _backend(name: str) -> str:
    return (f"setting of Celery's {name} result backend, which Conveyor does not have; "
            "use redis://, sqlite:/// or django-db")


def _slice(name: str) -> str:
    return f"implemented in issue 14 (slice {name})"


_CASSANDRA = _backend("Cassandra")
_AZURE = _backend("Azure Block Blob")
_COSMOS = _backend("CosmosDB")
_S3 = _backend("S3")
_GCS = _backend("Google Cloud Storage")
_ES = _backend("Elasticsearch")

NO_EFFECT: dict[str, NoEffect] = {
    # -- other result backends ------------------------------------------------
    "arangodb_backend_settings": NoEffect("dict", None, _backend("ArangoDB")),
    "azureblockblob_base_path": NoEffect("str", "", _AZURE),
    "azureblockblob_connection_timeout": NoEffect("int", 20, _AZURE),
    "azureblockblob_container_name": NoEffect("str", "celery", _AZURE),
    "azureblockblob_read_timeout": NoEffect("int", 120, _AZURE),
    "azureblockblob_retry_increment_base": NoEffect("int", 2, _AZURE),
    "azureblockblob_retry_initial_backoff_sec": NoEffect("int", 2, _AZURE),
    "azureblockblob_retry_max_attempts": NoEffect("int", 3, _AZURE),
    "cache_backend": NoEffect("str", None, _backend("cache (memcached)")),
    "cache_backend_options": NoEffect("dict", {}, _backend("cache (memcached)")),
    "cassandra_auth_kwargs": NoEffect("any", None, _CASSANDRA),
    "cassandra_auth_provider": NoEffect("str", None, _CASSANDRA),
    "cassandra_bundle_path": NoEffect("str", None, _CASSANDRA),
    "cassandra_entry_ttl": NoEffect("float", None, _CASSANDRA),
    "cassandra_keyspace": NoEffect("str", None, _CASSANDRA),
    "cassandra_options": NoEffect("dict", {}, _CASSANDRA),
    "cassandra_port": NoEffect("any", None, _CASSANDRA),
    "cassandra_read_consistency": NoEffect("str", None, _CASSANDRA),
    "cassandra_servers": NoEffect("list", None, _CASSANDRA),
    "cassandra_table": NoEffect("str", None, _CASSANDRA),
    "cassandra_write_consistency": NoEffect("str", None, _CASSANDRA),
    "cosmosdbsql_collection_name": NoEffect("str", "celerycol", _COSMOS),
    "cosmosdbsql_consistency_level": NoEffect("str", "Session", _COSMOS),
    "cosmosdbsql_database_name": NoEffect("str", "celerydb", _COSMOS),
    "cosmosdbsql_max_retry_attempts": NoEffect("int", 9, _COSMOS),
    "cosmosdbsql_max_retry_wait_time": NoEffect("int", 30, _COSMOS),
    "couchbase_backend_settings": NoEffect("dict", None, _backend("Couchbase")),
    "elasticsearch_max_retries": NoEffect("int", None, _ES),
    "elasticsearch_retry_on_timeout": NoEffect("bool", None, _ES),
    "elasticsearch_save_meta_as_text": NoEffect("bool", True, _ES),
    "elasticsearch_timeout": NoEffect("float", None, _ES),
    "gcs_base_path": NoEffect("str", "", _GCS),
    "gcs_bucket": NoEffect("str", None, _GCS),
    "gcs_project": NoEffect("str", None, _GCS),
    "gcs_ttl": NoEffect("float", 0, _GCS),
    "mongodb_backend_settings": NoEffect("dict", None, _backend("MongoDB")),
    "s3_access_key_id": NoEffect("str", None, _S3),
    "s3_base_path": NoEffect("str", None, _S3),
    "s3_bucket": NoEffect("str", None, _S3),
    "s3_endpoint_url": NoEffect("str", None, _S3),
    "s3_region": NoEffect("str", None, _S3),
    "s3_secret_access_key": NoEffect("str", None, _S3),
    "database_create_tables_at_setup": NoEffect("bool", True, SQLALCHEMY),
    "database_engine_callback": NoEffect("any", None, SQLALCHEMY),
    "database_engine_options": NoEffect("dict", {"pool_pre_ping": True, "pool_recycle": 3600},
                                        SQLALCHEMY),
    "database_short_lived_sessions": NoEffect("bool", False, SQLALCHEMY),
    "database_table_names": NoEffect("dict", None, SQLALCHEMY),
    "database_table_schemas": NoEffect("dict", None, SQLALCHEMY),
    "database_url": NoEffect("str", None, "set result_backend to the db+<url> form instead"),
    # -- broker connection ------------------------------------------------------
    "broker_channel_error_retry": NoEffect("bool", False, AMQP),
    "broker_failover_strategy": NoEffect("any", None,
                                         "broker_url names one server; failover lists are not "
                                         "supported (use a Redis Sentinel or managed endpoint)"),
    "broker_heartbeat": NoEffect("int", 120, "on amqp:// a worker's consuming connection asks "
                                             "for half the lease and others take the server's, "
                                             "unless broker_transport_options['heartbeat'] sets "
                                             "it; Redis connections are health-checked instead"),
    "broker_heartbeat_checkrate": NoEffect("float", 3.0,
                                           "pika sends and checks RabbitMQ's heartbeats "
                                           "itself, at the interval broker_heartbeat "
                                           "describes; Redis has no heartbeats"),
    "broker_host": NoEffect("str", None, URL_PARTS),
    "broker_login_method": NoEffect("str", None, "RabbitMQ logs in with PLAIN, the URL's "
                                                 "user and password (AMQPLAIN and EXTERNAL "
                                                 "are not offered)"),
    "broker_native_delayed_delivery_queue_type": NoEffect("str", "quorum", QUEUE_TYPE),
    "broker_password": NoEffect("str", None, URL_PARTS),
    "broker_pool_acquire_timeout": NoEffect("float", None,
                                            "the Redis client's pool blocks no caller; "
                                            "size it with the max_connections transport option"),
    "broker_pool_limit": NoEffect("int", 10, "size the pool with the max_connections "
                                             "transport option (broker_transport_options)"),
    "broker_port": NoEffect("int", None, URL_PARTS),
    "broker_read_url": NoEffect("str", None, "one broker_url serves sending and consuming"),
    "broker_transport": NoEffect("str", None, "the broker_url scheme picks the broker"),
    "broker_user": NoEffect("str", None, URL_PARTS),
    "broker_vhost": NoEffect("str", None, URL_PARTS),
    "broker_write_url": NoEffect("str", None, "one broker_url serves sending and consuming"),
    # -- remote control and events ---------------------------------------------
    "control_exchange": NoEffect("str", "celery", NO_CONTROL),
    "control_queue_durable": NoEffect("bool", False, NO_CONTROL),
    "control_queue_exclusive": NoEffect("bool", True, NO_CONTROL),
    "control_queue_expires": NoEffect("float", 10.0, NO_CONTROL),
    "control_queue_ttl": NoEffect("float", 300.0, NO_CONTROL),
    "event_exchange": NoEffect("str", "celeryev", EVENTS),
    "event_queue_durable": NoEffect("bool", False, EVENTS),
    "event_queue_exclusive": NoEffect("bool", True, EVENTS),
    "event_queue_expires": NoEffect("float", 60.0, EVENTS),
    "event_queue_prefix": NoEffect("str", "celeryev", EVENTS),
    "event_queue_ttl": NoEffect("float", 5.0, EVENTS),
    "event_serializer": NoEffect("str", "json", "events are always stored as JSON"),
    "task_send_sent_event": NoEffect("bool", False, EVENTS),
    "worker_send_task_events": NoEffect("bool", False, EVENTS),
    "worker_enable_remote_control": NoEffect("bool", True, ALWAYS_CONTROL),
    # -- beat -------------------------------------------------------------------
    "beat_cron_starting_deadline": NoEffect("int", None, "replaced by beat_missed_policy"),
    "beat_schedule_filename": NoEffect("str", "celerybeat-schedule",
                                       "beat keeps its state in the broker beside its leader "
                                       "lease, not in a shelve file"),
    "beat_sync_every": NoEffect("int", 0, "beat state is written at every tick, in the broker"),
    # -- results ----------------------------------------------------------------
    "redis_db": NoEffect("int", None, RESULT_URL_PARTS),
    "redis_host": NoEffect("str", None, RESULT_URL_PARTS),
    "redis_password": NoEffect("str", None, RESULT_URL_PARTS),
    "redis_port": NoEffect("int", None, RESULT_URL_PARTS),
    "redis_username": NoEffect("str", None, RESULT_URL_PARTS),
    "redis_retry_on_timeout": NoEffect("bool", False,
                                       "redis-py's own retries stay off: a resent write could "
                                       "run twice; reads retry with backoff by themselves"),
    "redis_socket_keepalive": NoEffect("bool", False, "TCP keep-alive is always on"),
    "result_cache_max": NoEffect("int", -1, "results are not cached in the client; "
                                            "every read asks the store"),
    "result_chord_join_timeout": NoEffect("float", 3.0, "chords join atomically in the result "
                                                        "store; nothing polls (guarantee 7)"),
    "result_chord_retry_interval": NoEffect("float", 1.0, "chords join atomically in the result "
                                                          "store; nothing polls (guarantee 7)"),
    "result_compression": NoEffect("str", None, NO_COMPRESSION),
    "result_exchange": NoEffect("str", "celeryresults", AMQP),
    "result_exchange_type": NoEffect("str", "direct", AMQP),
    "result_extended": NoEffect("bool", False, "task name, arguments and worker are always "
                                               "stored with the result"),
    "result_persistent": NoEffect("bool", None, "AMQP result messages; results persist as "
                                                "their store does"),
    # -- security -----------------------------------------------------------------
    "security_cert_store": NoEffect("str", None, NO_SIGNING),
    "security_certificate": NoEffect("str", None, NO_SIGNING),
    "security_digest": NoEffect("str", "sha256", NO_SIGNING),
    "security_key": NoEffect("str", None, NO_SIGNING),
    "security_key_password": NoEffect("any", None, NO_SIGNING),
    # -- tasks --------------------------------------------------------------------
    "task_allow_error_cb_on_chord_header": NoEffect(
        "bool", False, "a chord's link_error is called once when a header task fails "
                       "(guarantee 7, docs/canvas.md); header errbacks are not added"),
    "task_annotations": NoEffect("any", None, "not supported: set the options on the task "
                                              "decorator, or route with task_routes"),
    "task_compression": NoEffect("str", None, NO_COMPRESSION),
    "task_create_missing_queue_exchange_type": NoEffect("str", None, AMQP),
    "task_create_missing_queue_type": NoEffect("str", "classic", QUEUE_TYPE),
    "task_default_delivery_mode": NoEffect("any", 2, "every message is persistent (delivery "
                                                     "mode 2 on RabbitMQ): a transient one "
                                                     "could be lost"),
    "task_default_exchange": NoEffect("str", None, AMQP),
    "task_default_exchange_type": NoEffect("str", "direct", AMQP),
    "task_default_queue_type": NoEffect("str", "classic", QUEUE_TYPE),
    "task_default_routing_key": NoEffect("str", None, AMQP),
    "task_protocol": NoEffect("int", 2, "Conveyor has its own versioned message format "
                                        "(docs/protocol.md)"),
    "task_publish_retry": NoEffect("bool", True, "a send is not retried: it succeeds or "
                                                 "raises BrokerUnavailable (guarantee 8)"),
    "task_publish_retry_policy": NoEffect("dict", {"max_retries": 3, "interval_start": 0,
                                                   "interval_max": 1, "interval_step": 0.2},
                                          "a send is not retried: it succeeds or raises "
                                          "BrokerUnavailable (guarantee 8)"),
    "task_remote_tracebacks": NoEffect("bool", False, "the worker's traceback text is always "
                                                      "kept in AsyncResult.traceback"),
    # -- worker -------------------------------------------------------------------
    "worker_agent": NoEffect("str", None, "Celery's AMQP agent (cell actors) has no counterpart"),
    "worker_autoscaler": NoEffect(
        "str", "celery.worker.autoscale:Autoscaler",
        "a custom autoscaler class; --autoscale MAX,MIN uses Conveyor's own rule"),
    "worker_cancel_long_running_tasks_on_connection_loss": NoEffect(
        "bool", False, "leases hand a lost worker's tasks out again; running tasks finish"),
    "worker_consumer": NoEffect("str", "celery.worker.consumer:Consumer",
                                "the consumer is not pluggable"),
    "worker_deduplicate_successful_tasks": NoEffect(
        "bool", False, "replaced by leases renewed while a task runs (guarantee 2) and "
                       "idempotency keys"),
    "worker_detect_quorum_queues": NoEffect("bool", True, QUEUE_TYPE),
    "worker_direct": NoEffect("bool", False, AMQP),
    "worker_disable_prefetch": NoEffect("bool", False, "set worker_prefetch_multiplier=1 "
                                                       "for the same effect"),
    "worker_enable_prefetch_count_reduction": NoEffect(
        "bool", True, "each worker process sets its own prefetch (worker_prefetch_multiplier) "
                      "on every new connection: there is no shared window to shrink after a "
                      "lost connection"),
    "worker_enable_soft_shutdown_on_idle": NoEffect("bool", False,
                                                    "replaced by worker_shutdown_timeout"),
    "worker_eta_task_limit": NoEffect("int", None, IN_BROKER),
    "worker_lost_wait": NoEffect("float", 10.0, "the supervisor notices a lost child at once"),
    "worker_pool_putlocks": NoEffect("bool", True, "Celery prefork internals; Conveyor's pool "
                                                   "hands work to free children only"),
    "worker_pool_restarts": NoEffect("bool", False, "no pool_restart remote command; restart "
                                                    "the worker (it shuts down warm)"),
    "worker_proc_alive_timeout": NoEffect("float", 4.0, "children report ready through a pipe; "
                                                        "nothing waits on a timeout"),
    "worker_soft_shutdown_timeout": NoEffect("float", 0.0, "replaced by worker_shutdown_timeout"),
    "worker_state_db": NoEffect("str", None, "revocations are kept in the broker, shared by "
                                             "every worker, not in a local file"),
    "worker_timer": NoEffect("str", None, IN_BROKER),
    "worker_timer_precision": NoEffect("float", 1.0, IN_BROKER),
    # Takes effect on RabbitMQ's classic queues only (Settings._takes_effect, ADR 0041).
    "task_queue_max_priority": NoEffect("int", None, "AMQP's x-max-priority, honoured on "
                                        "RabbitMQ's classic queues only: on Redis, SQLite and "
                                        "PostgreSQL every queue has priorities 0..9, "
                                        "RabbitMQ's quorum queues none"),
}
