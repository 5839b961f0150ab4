"""The Redis run store: shared by any number of gateway replicas."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import re
import secrets
import time
import uuid
from collections.abc import AsyncGenerator, Mapping, Sequence
from types import TracebackType
from typing import Any, cast

import orjson
import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript

from asyncgate.errors import ConfigError, QueueFull, ShareExceeded, StoreError, StoreUnavailable, WebhookUrlDeleted
from asyncgate.runs import (
    COMPLETED,
    EXPIRED_OUTCOME,
    MAX_PRIORITY,
    Delivery,
    DeliveryState,
    ErrorCode,
    Outcome,
    Run,
    RunError,
    RunResult,
    RunState,
    dump_delivery,
    dump_error,
    dump_headers,
    dump_request,
    load_delivery,
    load_error,
    load_headers,
    load_progress,
    load_request,
    new_run_id,
    now,
)
from asyncgate.store.base import (
    PURGE_BATCH,
    PURGE_ROUNDS,
    STARVATION_ROUND,
    UNFINISHED_TTL,
    CancelResult,
    ClaimRate,
    Created,
    DueDelivery,
    DueHook,
    Event,
    Finished,
    Idempotency,
    Identity,
    Lease,
    Liveness,
    QueuePosition,
    Share,
    delivery_event,
    finished_taking,
    load_hook,
    pending_delivery,
    state_event,
)
from asyncgate.store.batching import MAX_SENDS, ScriptBatch, ScriptCall
from asyncgate.store.connect import RedisClient, close_client, connect
from asyncgate.store.sealing import Sealer
from asyncgate.store.slots import SlotKeys, slot_of, slot_tags

logger = logging.getLogger("asyncgate.store")

# Key schema. ``P`` is the key prefix (store.key_prefix, by default "asyncgate:<deployment>"; it
# must not contain "{" or "}"); every key starts with the hash tag ``{P}``, so all of one
# deployment's keys live in one Cluster slot, and no two deployments share a key.
#
#   {P}:run:<id>      hash    One run, and all of it: state, attempt, created_at, started_at,
#                             finished_at, upstream_status, error (JSON), request (JSON), body
#                             (request bytes, dropped at finish), owner, lease_until,
#                             result_status, result_headers (JSON), result_body, secrets
#                             (the request's credentials, sealed; deleted when the run ends),
#                             caller, webhook ("1" when the run has one), webhook_url (its URL,
#                             sealed; the request holds it masked; deleted once the delivery is
#                             final), cancel ("1" once asked while running), delivery (JSON of
#                             runs.Delivery), dlv_seq (fences delivery attempts), idem_key (the
#                             idempotency key naming the run), entry (the id of its last queue
#                             entry, deleted if it is cancelled), progress (JSON of the latest
#                             progress event), progress_n (reports made), progress_id (the
#                             event id of the latest, deleted by the next past the kept bound),
#                             hook_events (the lifecycle webhook events asked for, "start,output"),
#                             hook_seq (lifecycle deliveries numbered so far), hook_token (fences
#                             their attempts), hook_dropped (deliveries not queued, queue full),
#                             priority (when not 0), deadline (its queue deadline, when it has
#                             one), shares (the {P}:shares fields counting it, newline-separated,
#                             until it ends), expires_at (when its retention ends: set at its
#                             end, or at its webhook delivery's end; past it, reads find no run).
#                             No TTL (#18): purge() deletes the run and all its keys once its
#                             {P}:expiry entry is due. Runs written before #18 carry TTLs; purge()
#                             deletes them the same way, whether or not their TTL came first.
#   {P}:events:<id>   stream  The run's event log (state changes, webhook changes), written by
#                             the same script as the change, and its output (output.py), past
#                             its kept bound written and deleted again (XDEL); deleted with the run.
#   {P}:queue         stream  The work queue. An entry is {run_id: <id>} and nothing else; it is
#                             read through the consumer group "P:executors", then acked and
#                             deleted, so the stream holds only work not yet taken.
#   {P}:ranked        zset    Queued runs of priority 1 and more (those of priority 0 are in
#                             {P}:queue): member run id, score rank_band(priority) plus the
#                             next number of {P}:counters ranked_seq: higher
#                             priorities first, then first in. Taken by claim() through the claim script,
#                             which removes the member; a member whose run is not queued is
#                             dropped when met. {P}:queue is level 0, the lowest.
#   {P}:wake          stream  One entry per run queued in {P}:ranked, read through the same
#                             consumer group, only to wake a claim blocked on {P}:queue.
#                             Capped (MAXLEN ~) at WAKE_MAXLEN.
#   {P}:deadlines     zset    Queued runs with a queue deadline: member run id, score the
#                             deadline. expire_queued() ends those past it (or drops the member
#                             of a run that started meanwhile).
#   {P}:shares        hash    Field a share's key (store/base.py Share), value the runs it
#                             counts queued or running; counted by the create script,
#                             uncounted by every script that ends a run; deleted at zero.
#   {P}:counters      hash    claimed: runs claimed so far by every gateway (the queue's rate);
#                             ranked_seq: see {P}:ranked; swept: the creation time purge() has
#                             looked at runs up to (see _SWEEP). No TTL: one small key per deployment.
#   {P}:leases        zset    Index of running runs: member run id, score lease_until, so that
#                             expired() need not scan. A hint only; the run hash is the truth.
#   {P}:leases        zset    Index of runs leased on their own: member run id, score lease_until,
#                             so that expired() need not scan. Runs claimed by an owner without a
#                             heartbeat, or renewed one by one (renew). A hint only; the run hash
#                             is the truth.
#   {P}:gateways      zset    Heartbeats (keep_alive): member a gateway's owner name, score the time
#                             until which every run it holds is leased to it. One write per gateway
#                             per renewal interval, however many runs it holds. An entry that ran
#                             out while other gateways went on is never renewed again (the gateway
#                             takes a new name); it is dropped once none of its runs is left.
#   {P}:held          zset    Runs held under a heartbeat: member "<owner> <run id>", score 0, so
#                             that one owner's runs are one ZRANGEBYLEX. Written by the claim,
#                             dropped by requeue, recovery and purge(), and for a finished run by
#                             the owner's next heartbeat (see _FINISH). A hint, like leases.
#   {P}:cancels       zset    Cancellations asked while a run was running: member "<owner> <run id>",
#                             score 0; taken by the owner's next heartbeat, since the cancel
#                             message on P:cancel may be missed. Dropped by the run's finish too.
#   {P}:index         zset    Every run, score created_at, for listing; {P}:index:<caller> the
#                             same per caller. Entries of deleted runs are dropped by purge().
#   {P}:expiry        zset    Runs ended, member "<id> <caller>", score the time purge() deletes
#                             it: its expires_at (UNFINISHED_TTL from a redelivery), written by the
#                             finishing gateway after its next heartbeat (see _FINISH), or by the
#                             step that ended it; a run that never ends is given one by the sweep of
#                             {P}:index (_SWEEP). purge() takes the entries now due and deletes each
#                             run, its keys and its entries in the indexes above, in one step.
#   {P}:deliveries    zset    Webhook deliveries not yet final: member run id, score the time
#                             the next attempt is due (or a taken attempt's lease runs out).
#   {P}:hooks:<id>    list    The run's lifecycle webhook deliveries waiting, first to send first:
#                             JSON {seq, event, attempts, body[, dropped]}; deleted with the run.
#   {P}:hookruns      zset    Runs with lifecycle deliveries waiting: member run id, score when the
#                             first is due (or a taken attempt's lease runs out).
#   {P}:idem:<hash>   string  "<run_id> <fingerprint>" for an Idempotency-Key; deleted with its run
#                             (one naming a run past its expires_at is taken by a new run).
#   {P}:deployment    hash    Whose keys these are: deployment, upstream (the URL the runs were
#                             accepted for). Written by executing gateways at start; no TTL.
#   {P}:progress_key  string  The key signing progress URLs (progress.py), random, made by the
#                             first gateway needing it (SET NX); no TTL.
#   {P}:probe         string  Written and deleted at once by each readiness check (never stays).
#   {P}:alive         hash    When a gateway last reached the store (seen) and, after a silence
#                             of every gateway, the time before which no lease is judged expired
#                             (resume): see heartbeat(). No TTL: one small key per deployment.
#   P:cancel          channel Run ids whose cancellation was asked, for the replica holding them.
#   {P}:wake:<token>  stream  One per gateway process that follows event logs (feeds.py): added
#                             to when the runs it follows change, so that its one blocking XREAD
#                             over all their logs, which includes this key, returns and is made
#                             again with the new set. MAXLEN 1; TTL WAKE_TTL from each addition.
#
# Why one slot: every change is one Lua script that checks and writes in one step, and many
# touch a run and a shared key at once (the queue, an index, the deliveries), which Redis
# Cluster allows only within a slot. By default (store.slots: 1) a deployment therefore lives on
# one shard (it gets the Cluster's failover, not its sharding); deployments with other prefixes
# spread. With store.slots: N, the tag {P} above is one of N tags {P:k.j} (store/slots.py),
# spread over the Cluster's slot ranges: each run lives wholly under one of them (chosen by its
# id), and each tag has its own copy of every key above but {P}:deployment and
# {P}:progress_key, which stay under {P}. See docs/scaling.md#slots.
#
# Times are the caller's clock (time.time()), so replicas need synchronised clocks (NTP);
# a skew shows up as leases expiring that much early or late.

#: A wake stream (see the key schema) left by a gateway that stopped expires this long after its last use.
WAKE_TTL = 3600
#: Ordinary commands fail with StoreUnavailable after this long without an answer.
SOCKET_TIMEOUT = 5.0
#: The longest claim() blocks on the queue; longer waits are cut to this.
MAX_CLAIM_WAIT = 60.0
#: A queue entry read but never acked (its reader died in between) is taken over after this.
STALE_ENTRY_IDLE = 60.0
#: Connections for ordinary commands, at most; a command finding them all busy waits (up to
#: SOCKET_TIMEOUT) for one. Each holds a connection for one round trip, so a few hundred serve
#: thousands of requests and runs, and a fleet of replicas stays far below Redis's maxclients.
POOL_SIZE = 256
#: The name of the heartbeat's own connection, as CLIENT LIST shows it.
LIFELINE_NAME = "asyncgate-heartbeat"
#: How long create() waits for a replica's confirmation under store.durability: strict.
STRICT_WAIT_MS = 2000
#: Index entries examined per listing page before it returns what it found (and a cursor).
LIST_SCAN_BUDGET = 1000
#: The key prefix of every gateway before deployments had their own (see docs/fleets.md).
LEGACY_PREFIX = "asyncgate"
#: Error replies of a Redis that answers but takes no write: out of memory under maxmemory,
#: a failed save with stop-writes-on-bgsave-error, a replica, too few replicas (min-replicas).
#: redis-py raises OutOfMemoryError and ReadOnlyError for two of them, with the code cut off.
_WRITES_REFUSED = frozenset({"OOM", "MISCONF", "READONLY", "NOREPLICAS"})
#: Leases renewed per script call: Redis runs nothing else while a script runs.
RENEW_BATCH = 500
#: Runs claimed per script call, at most, for the same reason: each takes about 17 us (runs of
#: 1 KiB bodies, on the development machine), so a batch stays well under a millisecond.
CLAIM_BATCH = 32
#: The longest a claim over several slots blocks on one of them (see _claim_spread): how late,
#: at most, an idle gateway finds a run queued in another slot, at the cost of a look at each
#: slot that often.
SPREAD_WAIT = 0.25
#: Runs one purge script deletes, at most: Redis runs nothing else while a script runs.
PURGE_SCRIPT_RUNS = 100
#: Index entries of finished runs written per command by a heartbeat (see _FINISH): a ZREM or a
#: ZADD of 1,000 members holds Redis well under a millisecond.
FINISHED_BATCH = 1000
#: Owners of lapsed heartbeats looked at per recovery pass.
LAPSED_OWNERS = 10
#: Ids of the queue stream are milliseconds; an entry older than a run can live names no run.
_QUEUE_ENTRY_LIFETIME_MS = UNFINISHED_TTL * 1000
#: Wake entries kept at most: each only wakes a blocked claim, so old ones matter to nobody.
WAKE_MAXLEN = 1000
#: Entries of {P}:queue counted when showing a run's position; past it, the position is a lower bound.
POSITION_SCAN = 1000
#: A priority's band in {P}:ranked scores: more runs than a deployment will ever queue, and ten
#: bands stay below 2**53, where a score (a double) is still exact.
_RANK_BAND = 2**41

# One consumer name for every replica: entries are acked within one round trip of being read,
# so per-replica names would only pile up dead consumers in the group after each restart.
_CONSUMER = "executor"

# Fields read for a status: the small ones, never the bodies.
_RUN_FIELDS = (
    "state",
    "attempt",
    "created_at",
    "started_at",
    "finished_at",
    "upstream_status",
    "error",
    "request",
    "caller",
    "cancel",
    "delivery",
    "progress",
    "hook_seq",
    "expires_at",
    "lease_until",
)
_RESULT_FIELDS = ("result_status", "result_headers", "result_body", "expires_at")
#: What a delivery attempt reads of its run as it takes it: the run, its result, its sealed webhook URL.
_DELIVERY_FIELDS = (*_RUN_FIELDS, *_RESULT_FIELDS, "webhook_url")

# Store a new run unless its idempotency key names one already, the queue is full, or a share
# is used up. KEYS run, events, queue, index, caller index, expiry (not written since #18: a run
# that never ends is found through the index, see _SWEEP), ranked, wake, deadlines, shares,
# counters, [idem]; ARGV run_id, created_at, "1" when {P}:ranked may hold runs (the queue's length
# counts them then; else it is empty, and one command is spared), max_queued, event JSON, state, attempt,
# started_at, caller, webhook, secrets, webhook_url, hook_events, request JSON, body, priority, its
# rank band, deadline, the number of shares n, n pairs of share key and limit, wake MAXLEN, [idem
# value]. The hash's field names are written here rather than sent with each run; an empty optional
# field means the run has none, and it is not stored. Priority 0 (every run when no route sets one)
# is the one stream, as it always was; higher ones go to the ranked set, and wake a blocked claim.
_CREATE = """
local idem = KEYS[12]
if idem then
  local existing = redis.call('GET', idem)
  if existing then
    -- The run it names may be past its retention, gone to readers though not purged yet.
    local named = string.sub(KEYS[1], 1, #KEYS[1] - #ARGV[1]) .. string.match(existing, '^%S+')
    local expires = redis.call('HGET', named, 'expires_at')
    if not expires or tonumber(expires) > tonumber(ARGV[2]) then return {'replay', existing} end
  end
end
if tonumber(ARGV[4]) > 0 then
  local waiting = redis.call('XLEN', KEYS[3])
  if ARGV[3] == '1' then waiting = waiting + redis.call('ZCARD', KEYS[7]) end
  if waiting >= tonumber(ARGV[4]) then return {'full'} end
end
local shares = tonumber(ARGV[19])
for i = 1, shares do
  local held = redis.call('HGET', KEYS[10], ARGV[18 + 2 * i])
  if held and tonumber(held) >= tonumber(ARGV[19 + 2 * i]) then return {'share', tostring(i)} end
end
local fields = {'state', ARGV[6], 'attempt', ARGV[7], 'created_at', ARGV[2], 'request', ARGV[14], 'body', ARGV[15]}
for i, name in ipairs({'started_at', 'caller', 'webhook', 'secrets', 'webhook_url', 'hook_events'}) do
  local value = ARGV[7 + i]
  if value ~= '' then
    fields[#fields + 1] = name
    fields[#fields + 1] = value
  end
end
if idem then
  fields[#fields + 1] = 'idem_key'
  fields[#fields + 1] = idem
end
if shares > 0 then
  local keys = {}
  for i = 1, shares do
    keys[i] = ARGV[18 + 2 * i]
    redis.call('HINCRBY', KEYS[10], keys[i], 1)
  end
  fields[#fields + 1] = 'shares'
  fields[#fields + 1] = table.concat(keys, '\\n')
end
if ARGV[18] ~= '' then
  fields[#fields + 1] = 'deadline'
  fields[#fields + 1] = ARGV[18]
  redis.call('ZADD', KEYS[9], ARGV[18], ARGV[1])
end
if ARGV[16] == '0' then
  fields[#fields + 1] = 'entry'
  fields[#fields + 1] = redis.call('XADD', KEYS[3], '*', 'run_id', ARGV[1])
else
  fields[#fields + 1] = 'priority'
  fields[#fields + 1] = ARGV[16]
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('XADD', KEYS[2], '*', 'data', ARGV[5])
if ARGV[16] ~= '0' then
  local seq = redis.call('HINCRBY', KEYS[11], 'ranked_seq', 1)
  redis.call('ZADD', KEYS[7], string.format('%.0f', ARGV[17] + seq), ARGV[1])
  redis.call('XADD', KEYS[8], 'MAXLEN', '~', ARGV[20 + 2 * shares], '*', 'w', '1')
end
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])
-- A run without a caller is listed in the one index (its caller's index is that same key).
if KEYS[5] ~= KEYS[4] then redis.call('ZADD', KEYS[5], ARGV[2], ARGV[1]) end
if idem then redis.call('SET', idem, ARGV[21 + 2 * shares]) end
return {'created'}
"""

# Redis's own clock, in seconds: every time that says whether a heartbeat or a lease ran out is
# written and judged by it, one clock for the whole fleet, so that a gateway's wall clock jumping
# (a VM resumed, an NTP step) makes no live holder look lost, nor a dead one alive (docs/leases.md).
# Scripts may call TIME: Redis replicates their effects, not the scripts (the default since 5.0).
_CLOCK = """
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
"""

# Redis's time (KEYS[1] only names the slot whose node answers).
_NOW = _CLOCK + "return string.format('%.6f', clock())"

# What a claim reads of each run: a status's fields, its sealed credentials and its request body,
# so that the holder needs no read of its own before its call.
_CLAIM_FIELDS = (*_RUN_FIELDS, "secrets", "body")

# Take queued runs: the check and the write are one step, so no two claimers get one run; their
# queue entries are acked and deleted in the same step (an entry taken is never read again, and a
# script that did not run acked nothing). Under a heartbeat (ARGV[5] "1") the owner's heartbeat
# must not have run out, and the runs are indexed by owner in {P}:held with no lease of their
# own; else each gets a lease of its own, until Redis's clock plus ARGV[3], indexed in
# {P}:leases. Runs taken from {P}:ranked (ARGV[6] "1") leave it, whether or not they are still
# queued (a cancelled or expired run's member is dropped here). The claims count in
# {P}:counters (the queue's rate, for queue positions).
# KEYS queue, leases, held, gateways, ranked, counters, then run and events key per run; ARGV
# now (the runs' started_at), owner, lease (s), group, heartbeat, ranked, the number n of entry
# ids, the n ids, then one run id per run. One reply per run (its fields, or nil), then the
# claims counted so far.
_CLAIM = (
    _CLOCK
    + """
local now, owner = ARGV[1], ARGV[2]
local at = clock()
local lease_until = string.format('%.6f', at + tonumber(ARGV[3]))
local heartbeat = ARGV[5] == '1'
if heartbeat then
  local alive = redis.call('ZSCORE', KEYS[4], owner)
  if not alive or tonumber(alive) < at then return false end
end
local acked = tonumber(ARGV[7])
local count = (#KEYS - 6) / 2
local replies, index, taken = {}, {}, 0
for i = 1, count do
  local run, run_id = KEYS[5 + 2 * i], ARGV[7 + acked + i]
  local fields = redis.call('HMGET', run, FIELDS)
  if fields[1] == 'queued' then
    local attempt = (tonumber(fields[2]) or 0) + 1
    fields[1], fields[2], fields[4] = 'running', tostring(attempt), now
    if heartbeat then
      redis.call('HSET', run, 'state', 'running', 'attempt', attempt, 'started_at', now, 'owner', owner)
      index[#index + 1] = 0
      index[#index + 1] = owner .. ' ' .. run_id
    else
      redis.call('HSET', run, 'state', 'running', 'attempt', attempt, 'started_at', now, 'owner', owner,
        'lease_until', lease_until)
      fields[LEASE_UNTIL] = lease_until
      index[#index + 1] = lease_until
      index[#index + 1] = run_id
    end
    local event = {event='running', status='running', attempt=attempt, at=tonumber(now)}
    redis.call('XADD', KEYS[6 + 2 * i], '*', 'data', cjson.encode(event))
    replies[i] = fields
    taken = taken + 1
  else
    replies[i] = false
  end
end
if #index > 0 then redis.call('ZADD', heartbeat and KEYS[3] or KEYS[2], unpack(index)) end
if acked > 0 then
  redis.call('XACK', KEYS[1], ARGV[4], unpack(ARGV, 8, 7 + acked))
  redis.call('XDEL', KEYS[1], unpack(ARGV, 8, 7 + acked))
end
if ARGV[6] == '1' and count > 0 then redis.call('ZREM', KEYS[5], unpack(ARGV, 8 + acked, 7 + acked + count)) end
replies[count + 1] = redis.call('HINCRBY', KEYS[6], 'claimed', taken)
return replies
""".replace("FIELDS", ", ".join(f"'{name}'" for name in _CLAIM_FIELDS)).replace(
        "LEASE_UNTIL", str(_CLAIM_FIELDS.index("lease_until") + 1)
    )
)

# Every script that moves a run's retention records it in the hash (expires_at) and in the
# expiry index, so that purge() finds the run without scanning: defines schedule(expiry key, now,
# ttl (ms), run id). The caller is read from the hash, as the member names the caller's index too.
_SCHEDULE = """
local function schedule(expiry, at, ttl, run_id)
  local caller = redis.call('HGET', KEYS[1], 'caller') or ''
  local expires = string.format('%.6f', tonumber(at) + tonumber(ttl) / 1000)
  redis.call('HSET', KEYS[1], 'expires_at', expires)
  redis.call('ZADD', expiry, expires, run_id .. ' ' .. caller)
end
"""

# The end of a run (finished, cancelled or expired): its event, its delivery if it has a webhook,
# its retention, and its shares uncounted. KEYS run, events, deliveries, expiry; ARGV[1..5] event
# JSON, pending delivery JSON, now, retention (ms), run id; the run's webhook, caller and shares
# fields, read by the caller's own HMGET (one read per run, not one per field), ``shares_key``
# the {P}:shares key, ``fields`` the caller's own field pairs, written by the same HSET, and
# ``defer`` true when the caller leaves the {P}:expiry entry to the store (see _FINISH): the
# function returns the time the run expires then. ``delivery`` and ``due``, when given, replace
# the pending delivery and its due time (a delivery taken as the run finishes, see _FINISH).
# No key of a run has a TTL (#18): expires_at and the run's entry in {P}:expiry say when purge()
# deletes it, and reads treat a run past its expires_at as gone. A pending delivery leaves both
# unset until it is final (the sweep of {P}:index deletes the run UNFINISHED_TTL after create).
_CLOSE = """
local function close_run(webhook, caller, counted, shares_key, fields, defer, delivery, due)
  if counted then
    for key in string.gmatch(counted, '[^\\n]+') do
      if redis.call('HINCRBY', shares_key, key, -1) <= 0 then redis.call('HDEL', shares_key, key) end
    end
    redis.call('HDEL', KEYS[1], 'shares')
  end
  redis.call('XADD', KEYS[2], '*', 'data', ARGV[1])
  if webhook == '1' then
    fields[#fields + 1] = 'delivery'
    fields[#fields + 1] = delivery or ARGV[2]
    redis.call('ZADD', KEYS[3], due or ARGV[3], ARGV[5])
  else
    local expires = string.format('%.6f', tonumber(ARGV[3]) + tonumber(ARGV[4]) / 1000)
    fields[#fields + 1] = 'expires_at'
    fields[#fields + 1] = expires
    if not defer then redis.call('ZADD', KEYS[4], expires, ARGV[5] .. ' ' .. (caller or '')) end
    redis.call('HSET', KEYS[1], unpack(fields))
    return expires
  end
  redis.call('HSET', KEYS[1], unpack(fields))
end
"""

# The fence of every write made for an attempt (see store/base.py). ARGV[1] is the attempt.
_HOLDS = """
local state, attempt = unpack(redis.call('HMGET', KEYS[1], 'state', 'attempt'))
if state ~= 'running' or attempt ~= ARGV[1] then return 0 end
"""

# KEYS run, leases; ARGV attempt, lease (s), run id. 2 when a client asked to cancel the run.
# Only when the fence holds is the index entry moved: a refused, stale attempt must not move
# the entry of the attempt that now holds the run.
_RENEW = (
    _CLOCK
    + _HOLDS
    + """
local lease_until = string.format('%.6f', clock() + tonumber(ARGV[2]))
redis.call('HSET', KEYS[1], 'lease_until', lease_until)
redis.call('ZADD', KEYS[2], lease_until, ARGV[3])
if redis.call('HGET', KEYS[1], 'cancel') == '1' then return 2 end
return 1
"""
)

# Renew every lease one gateway holds in one step: one round trip per renewal interval, where
# renew() takes two per run. KEYS leases, then each run; ARGV lease (s), then run id and
# attempt per run. One code per run: 0 lost, 1 held, 2 held and asked to cancel.
_RENEW_ALL = (
    _CLOCK
    + """
local lease_until = string.format('%.6f', clock() + tonumber(ARGV[1]))
local codes, index = {}, {}
for i = 2, #KEYS do
  local run_id, held = ARGV[2 * i - 2], ARGV[2 * i - 1]
  local state, attempt, cancel = unpack(redis.call('HMGET', KEYS[i], 'state', 'attempt', 'cancel'))
  if state == 'running' and attempt == held then
    redis.call('HSET', KEYS[i], 'lease_until', lease_until)
    index[#index + 1] = lease_until
    index[#index + 1] = run_id
    codes[i - 1] = cancel == '1' and 2 or 1
  else
    codes[i - 1] = 0
  end
end
-- Only the attempts that still hold their run move their index entry (see renew()).
if #index > 0 then redis.call('ZADD', KEYS[1], unpack(index)) end
return codes
"""
)

# A silence of every gateway longer than ``quiet`` means the store was down or unreachable,
# and nobody could renew: the check and the new grace are one step, so whichever gateway
# comes back first sets the grace for all (#22). KEYS alive; ARGV quiet, grace. beat() returns
# Redis's time, and the time until which no lease may be judged expired.
_BEAT = (
    _CLOCK
    + """
local function beat()
  local now = clock()
  local seen, resume = unpack(redis.call('HMGET', KEYS[1], 'seen', 'resume'))
  resume = resume or '0'
  if not seen or now - tonumber(seen) > tonumber(ARGV[1]) then
    resume = string.format('%.6f', now + tonumber(ARGV[2]))
    redis.call('HSET', KEYS[1], 'resume', resume)
  end
  if not seen or now > tonumber(seen) then redis.call('HSET', KEYS[1], 'seen', string.format('%.6f', now)) end
  return now, resume
end
"""
)
# Replies Redis's time and the grace's end (by that clock).
_HEARTBEAT = _BEAT + "local now, resume = beat() return {string.format('%.6f', now), resume}"

# One gateway's heartbeat, and the fleet's (see _HEARTBEAT) with it: one step per renewal
# interval keeps every run the gateway holds, however many. An entry that ran out is renewed
# only within the grace after a silence of every gateway (the store was gone for all, so nobody
# could have judged it); otherwise its runs may be recovered already, and the answer is "lost".
# Whether an entry the gateway had is missing (dropped as lapsed) is told by ARGV[6] "1".
# KEYS alive, gateways, cancels; ARGV quiet, grace, owner, lease (s), known. Replies Redis's
# time, the grace's end, "alive" or "lost", then the ids of the owner's runs asked to cancel.
_KEEP_ALIVE = (
    _BEAT
    + """
local now, resume = beat()
local owner = ARGV[3]
local last = redis.call('ZSCORE', KEYS[2], owner)
local lapsed
if last then lapsed = tonumber(last) < now else lapsed = ARGV[5] == '1' end
local at = string.format('%.6f', now)
if lapsed and now >= tonumber(resume) then return {at, resume, 'lost'} end
redis.call('ZADD', KEYS[2], string.format('%.6f', now + tonumber(ARGV[4])), owner)
local reply = {at, resume, 'alive'}
local cancels = redis.call('ZRANGEBYLEX', KEYS[3], '[' .. owner .. ' ', '(' .. owner .. '!')
if #cancels > 0 then
  redis.call('ZREM', KEYS[3], unpack(cancels))
  for i, member in ipairs(cancels) do reply[i + 3] = string.sub(member, #owner + 2) end
end
return reply
"""
)

# Drop the heartbeat of a lapsed owner none of whose runs is left. KEYS gateways, held; ARGV
# owner, now.
_BURY = """
local last = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not last or tonumber(last) >= tonumber(ARGV[2]) then return 0 end
local left = redis.call('ZRANGEBYLEX', KEYS[2], '[' .. ARGV[1] .. ' ', '(' .. ARGV[1] .. '!', 'LIMIT', 0, 1)
if #left > 0 then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
"""

# A run with a lease of its own that ran out while its owner's heartbeat went on: it moves
# under the heartbeat. KEYS run, leases, held; ARGV run id, owner.
_ADOPT = """
if redis.call('HGET', KEYS[1], 'state') == 'running' and redis.call('HGET', KEYS[1], 'owner') == ARGV[2] then
  redis.call('HDEL', KEYS[1], 'lease_until')
  redis.call('ZADD', KEYS[3], 0, ARGV[2] .. ' ' .. ARGV[1])
end
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""

# A batch of an attempt's output, fenced like finish so that a stale attempt's output never
# lands among the next attempt's; in the same step, output past the kept bound that live
# listeners have had their chance to read is deleted. KEYS run, events; ARGV attempt, the
# number of events, the events' JSON, then the ids to delete.
_APPEND_OUTPUT = (
    _HOLDS
    + """
local count = tonumber(ARGV[2])
local ids = {}
for i = 1, count do ids[i] = redis.call('XADD', KEYS[2], '*', 'data', ARGV[2 + i]) end
if #ARGV > 2 + count then redis.call('XDEL', KEYS[2], unpack(ARGV, 3 + count)) end
return ids
"""
)

# Queue a lifecycle delivery of the run (see add_hook()): a progress delivery replaces one
# waiting last, unless that one is the first (it may be being sent); with ``max`` waiting, it is
# counted as dropped, and the next one queued carries the count. Defines add_hook(run, hooks,
# hookruns, event, body, max, now, run id).
_ADD_HOOK = """
local function add_hook(run, hooks, hookruns, event, body, max, at, run_id)
  local waiting = redis.call('LLEN', hooks)
  if event == 'progress' and waiting >= 2 then
    local last = cjson.decode(redis.call('LINDEX', hooks, -1))
    if last.event == 'progress' then
      last.body = body
      redis.call('LSET', hooks, -1, cjson.encode(last))
      return
    end
  end
  if waiting >= tonumber(max) then
    redis.call('HINCRBY', run, 'hook_dropped', 1)
    return
  end
  local entry = {seq = redis.call('HINCRBY', run, 'hook_seq', 1), event = event, attempts = 0, body = body}
  local dropped = tonumber(redis.call('HGET', run, 'hook_dropped') or '0')
  if dropped > 0 then
    entry.dropped = dropped
    redis.call('HDEL', run, 'hook_dropped')
  end
  redis.call('RPUSH', hooks, cjson.encode(entry))
  if waiting == 0 then redis.call('ZADD', hookruns, 'NX', at, run_id) end
end
"""

# KEYS run, hooks, hookruns; ARGV attempt, event, body, max, now, run id.
_QUEUE_HOOK = (
    _HOLDS
    + _ADD_HOOK
    + """
add_hook(KEYS[1], KEYS[2], KEYS[3], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
return 1
"""
)

# A progress report, fenced like output; past the kept bound each report replaces the previous
# one in the log, so a chatty upstream holds the log to that bound plus one. A run whose webhook
# asked for progress gets its delivery queued in the same step.
# KEYS run, events, hooks, hookruns; ARGV attempt, event JSON, kept bound, hook body, max hooks,
# now, run id.
_REPORT_PROGRESS = (
    _HOLDS
    + _ADD_HOOK
    + """
local wanted = redis.call('HGET', KEYS[1], 'hook_events')
if wanted and string.find(',' .. wanted .. ',', ',progress,', 1, true) then
  add_hook(KEYS[1], KEYS[3], KEYS[4], 'progress', ARGV[4], ARGV[5], ARGV[6], ARGV[7])
end
local id = redis.call('XADD', KEYS[2], '*', 'data', ARGV[2])
local count = redis.call('HINCRBY', KEYS[1], 'progress_n', 1)
if count > tonumber(ARGV[3]) + 1 then
  local previous = redis.call('HGET', KEYS[1], 'progress_id')
  if previous then redis.call('XDEL', KEYS[2], previous) end
end
redis.call('HSET', KEYS[1], 'progress', ARGV[2], 'progress_id', id)
return id
"""
)

# Take the first queued lifecycle delivery of a run for one attempt. KEYS run, hooks, hookruns;
# ARGV now, lease_until, run id. Returns the token fencing the attempt and the delivery's JSON.
_TAKE_HOOK = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[2])
  redis.call('ZREM', KEYS[3], ARGV[3])
  return false
end
local first = redis.call('LINDEX', KEYS[2], 0)
if not first then redis.call('ZREM', KEYS[3], ARGV[3]) return false end
local due = redis.call('ZSCORE', KEYS[3], ARGV[3])
if due and tonumber(due) > tonumber(ARGV[1]) then return false end
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[3])
return {redis.call('HINCRBY', KEYS[1], 'hook_token', 1), first}
"""

# Report an attempt at the first queued lifecycle delivery. KEYS run, hooks, hookruns,
# deliveries; ARGV token, seq, attempts, next attempt time ("" once over), now, run id. Once the
# queue is empty, the run's completed delivery (waiting for it) is due at once.
_RECORD_HOOK = """
if redis.call('HGET', KEYS[1], 'hook_token') ~= ARGV[1] then return 0 end
local raw = redis.call('LINDEX', KEYS[2], 0)
if not raw then return 0 end
local first = cjson.decode(raw)
if string.format('%d', first.seq) ~= ARGV[2] then return 0 end
if ARGV[4] ~= '' then
  first.attempts = tonumber(ARGV[3])
  redis.call('LSET', KEYS[2], 0, cjson.encode(first))
  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[6])
  return 1
end
redis.call('LPOP', KEYS[2])
if redis.call('LLEN', KEYS[2]) > 0 then
  redis.call('ZADD', KEYS[3], ARGV[5], ARGV[6])
else
  redis.call('ZREM', KEYS[3], ARGV[6])
  redis.call('ZADD', KEYS[4], 'XX', ARGV[5], ARGV[6])
end
return 1
"""

# KEYS run, events, deliveries, expiry, leases, held, cancels, shares, hooks; ARGV as _CLOSE, then
# attempt, then the taken delivery's JSON and lease end ('' to leave the delivery pending), then
# the outcome's field pairs. A run leased on its own leaves {P}:leases in the same step. Two
# index writes are left to the store, which makes them for every run it finished with its next
# heartbeat or purge (#18): one ZREM of {P}:held for the runs held under a heartbeat, one ZADD of
# {P}:expiry (the run's expires_at is in its hash already, and reads honour it). Until then, a
# {P}:held entry names a run no longer running, which recovery drops as it always did; a run
# whose entry is never written (its gateway killed first) is found by the sweep of old runs
# (_SWEEP). Replies 0 when the attempt does not hold the run, else its owner (its {P}:held member
# is dropped whether or not it was leased on its own as well: a run renewed one by one after a
# claim under a heartbeat is in both), its expires_at (or '' while a delivery is pending), its
# caller, and, when it took the delivery, the delivery's token and sealed URL.
# Taking the delivery here, as _TAKE_DELIVERY would, lets the finishing gateway send it at once,
# without a take and a read of its own for each run (bench S6); lifecycle deliveries of the run
# still waiting go first, so then it stays pending.
_FINISH = (
    _CLOSE
    + """
local state, attempt, owner, lease_until, cancel, webhook, caller, counted, url = unpack(redis.call('HMGET',
  KEYS[1], 'state', 'attempt', 'owner', 'lease_until', 'cancel', 'webhook', 'caller', 'shares', 'webhook_url'))
if state ~= 'running' or attempt ~= ARGV[6] then return 0 end
local taken = ARGV[7] ~= '' and webhook == '1' and url and redis.call('EXISTS', KEYS[9]) == 0
-- The body and the credentials are emptied by the outcome's own HSET rather than deleted by a
-- command of their own (#18); the owner stays, read by nothing once the run is over.
if lease_until or cancel then redis.call('HDEL', KEYS[1], 'lease_until', 'cancel') end
local fields = {'body', '', 'secrets', '', unpack(ARGV, 9)}
local expires = close_run(webhook, caller, counted, KEYS[8], fields, true, taken and ARGV[7], taken and ARGV[8])
if lease_until then redis.call('ZREM', KEYS[5], ARGV[5]) end
if owner and cancel == '1' then redis.call('ZREM', KEYS[7], owner .. ' ' .. ARGV[5]) end
if taken then return {owner or '', '', caller or '', redis.call('HINCRBY', KEYS[1], 'dlv_seq', 1), url} end
return {owner or '', expires or '', caller or ''}
"""
)

# KEYS run, events, deliveries, expiry, queue, cancels, ranked, deadlines, shares; ARGV as
# _CLOSE, then the cancelled run's field pairs. The run's queue entry goes too: the queue's length
# is the number of runs waiting. A running run's holder is told by its next heartbeat too (see
# {P}:cancels).
_CANCEL = (
    _CLOSE
    + """
local state, owner, entry, webhook, caller, counted = unpack(redis.call('HMGET', KEYS[1],
  'state', 'owner', 'entry', 'webhook', 'caller', 'shares'))
if not state then return 'missing' end
if state == 'running' then
  redis.call('HSET', KEYS[1], 'cancel', '1')
  if owner then redis.call('ZADD', KEYS[6], 0, owner .. ' ' .. ARGV[5]) end
  return 'requested'
end
if state ~= 'queued' then return 'finished' end
if entry then redis.call('XDEL', KEYS[5], entry) end
redis.call('ZREM', KEYS[7], ARGV[5])
redis.call('ZREM', KEYS[8], ARGV[5])
redis.call('HDEL', KEYS[1], 'body', 'secrets', 'entry')
close_run(webhook, caller, counted, KEYS[9], {unpack(ARGV, 6)})
return 'cancelled'
"""
)

# End a run still waiting for its first start past its queue deadline. KEYS as _CANCEL; ARGV
# as _CLOSE, then the deadline's cutoff (now), then the expired run's field pairs. Returns true
# when it ended the run, false when it is not due (started, cancelled, gone, or its deadline
# moved): its member is dropped then too.
_EXPIRE = (
    _CLOSE
    + """
redis.call('ZREM', KEYS[8], ARGV[5])
local state, attempt, deadline, entry, webhook, caller, counted = unpack(redis.call('HMGET', KEYS[1],
  'state', 'attempt', 'deadline', 'entry', 'webhook', 'caller', 'shares'))
if state ~= 'queued' or attempt ~= '0' or not deadline or tonumber(deadline) >= tonumber(ARGV[6]) then return false end
if entry then redis.call('XDEL', KEYS[5], entry) end
redis.call('ZREM', KEYS[7], ARGV[5])
redis.call('HDEL', KEYS[1], 'body', 'secrets', 'entry')
close_run(webhook, caller, counted, KEYS[9], {unpack(ARGV, 7)})
return true
"""
)

# KEYS run, events, queue, ranked, wake, counters, held; ARGV attempt, event JSON, run id, the
# rank band of each priority (index 1 for priority 1, and so on), wake MAXLEN. A run keeps its
# priority, and goes to the back of its level. A run held under a heartbeat leaves its owner's
# index in the same step (one leased on its own stays in {P}:leases until expired() finds it not
# running, or a new claim re-indexes it).
_REQUEUE = """
local state, attempt, owner, lease_until, priority = unpack(redis.call('HMGET', KEYS[1],
  'state', 'attempt', 'owner', 'lease_until', 'priority'))
if state ~= 'running' or attempt ~= ARGV[1] then return 0 end
redis.call('HDEL', KEYS[1], 'owner', 'lease_until', 'started_at')
redis.call('XADD', KEYS[2], '*', 'data', ARGV[2])
priority = tonumber(priority or '0')
if priority > 0 then
  redis.call('HSET', KEYS[1], 'state', 'queued')
  local seq = redis.call('HINCRBY', KEYS[6], 'ranked_seq', 1)
  redis.call('ZADD', KEYS[4], string.format('%.0f', ARGV[3 + priority] + seq), ARGV[3])
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[#ARGV], '*', 'w', '1')
else
  redis.call('HSET', KEYS[1], 'state', 'queued', 'entry', redis.call('XADD', KEYS[3], '*', 'run_id', ARGV[3]))
end
if owner and not lease_until then redis.call('ZREM', KEYS[7], owner .. ' ' .. ARGV[3]) end
return 1
"""

# Take a due delivery for one attempt. KEYS run, deliveries, hooks; ARGV now, lease_until, run id.
# While lifecycle deliveries of the run wait, completed waits too (it is always the last): it is
# looked at again in a second, or as soon as the last of them is over (_RECORD_HOOK). Taken, the
# reply is the attempt's token, then what the attempt needs of the run (_DELIVERY_FIELDS) read in
# the same step: under a wave of deliveries, a script and three reads in two round trips cost
# most of a delivery's store time (bench S6).
_TAKE_DELIVERY = """
if redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('ZADD', KEYS[2], tonumber(ARGV[1]) + 1, ARGV[3])
  return false
end
local raw = redis.call('HGET', KEYS[1], 'delivery')
if not raw then redis.call('ZREM', KEYS[2], ARGV[3]) return false end
local delivery = cjson.decode(raw)
if delivery.state ~= 'pending' and delivery.state ~= 'delivering' then
  redis.call('ZREM', KEYS[2], ARGV[3])
  return false
end
if type(delivery.next_attempt_at) == 'number' and delivery.next_attempt_at > tonumber(ARGV[1]) then return false end
delivery.state = 'delivering'
delivery.next_attempt_at = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'delivery', cjson.encode(delivery))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
local reply = redis.call('HMGET', KEYS[1], FIELDS)
table.insert(reply, 1, redis.call('HINCRBY', KEYS[1], 'dlv_seq', 1))
return reply
""".replace("FIELDS", ", ".join(f"'{name}'" for name in _DELIVERY_FIELDS))

# Report an attempt. KEYS run, events, deliveries, expiry; ARGV token, delivery JSON, final
# ("1"/"0"), next attempt time, run id, retention (ms), event JSON, now. A final delivery starts
# the run's retention, and needs its URL no more.
_RECORD_DELIVERY = (
    _SCHEDULE
    + """
if redis.call('HGET', KEYS[1], 'dlv_seq') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'delivery', ARGV[2])
redis.call('XADD', KEYS[2], '*', 'data', ARGV[7])
if ARGV[3] == '1' then
  redis.call('HDEL', KEYS[1], 'webhook_url')
  redis.call('ZREM', KEYS[3], ARGV[5])
  schedule(KEYS[4], ARGV[8], ARGV[6], ARGV[5])
else
  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[5])
end
return 1
"""
)

# KEYS run, events, deliveries, expiry; ARGV now, pending delivery JSON, run id, ttl (s), sealed
# URL or "". The run is kept UNFINISHED_TTL from now, at most, while the delivery is pending.
# 2: no URL given and the run's own was deleted when its last delivery ended.
_REDELIVER = (
    _SCHEDULE
    + """
local state, webhook = unpack(redis.call('HMGET', KEYS[1], 'state', 'webhook'))
if webhook ~= '1' or (state ~= 'succeeded' and state ~= 'failed' and state ~= 'cancelled' and state ~= 'expired') then
  return 0
end
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[1], 'webhook_url', ARGV[5])
elseif redis.call('HEXISTS', KEYS[1], 'webhook_url') == 0 then
  return 2
end
redis.call('HSET', KEYS[1], 'delivery', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'dlv_seq', 1)
redis.call('ZADD', KEYS[3], ARGV[1], ARGV[3])
schedule(KEYS[4], ARGV[1], tonumber(ARGV[4]) * 1000, ARGV[3])
return 1
"""
)

# Claim the keys for a deployment and its upstream, unless they are another upstream's and the
# change was not asked for, or its runs are spread over another number of slots (store.slots; no
# field: 1, the layout before there was a choice). KEYS deployment; ARGV upstream, deployment,
# "1" to allow a change, slots. Returns the upstream and deployment found when it refuses, or
# "slots" and their number.
_BIND = """
local current, slots = unpack(redis.call('HMGET', KEYS[1], 'upstream', 'slots'))
if current and (slots or '1') ~= ARGV[4] then return {'slots', slots or '1'} end
if current and current ~= ARGV[1] and ARGV[3] ~= '1' then
  return {current, redis.call('HGET', KEYS[1], 'deployment') or ''}
end
redis.call('HSET', KEYS[1], 'upstream', ARGV[1], 'deployment', ARGV[2])
if ARGV[4] ~= '1' then redis.call('HSET', KEYS[1], 'slots', ARGV[4]) end
return false
"""

# A write that leaves nothing behind: refused like any write when Redis cannot take one
# (OOM under maxmemory, MISCONF after a failed save, READONLY on a replica).
# KEYS probe; ARGV none.
_PROBE = """
redis.call('SET', KEYS[1], '1')
redis.call('DEL', KEYS[1])
return 1
"""

# How many entries of the queue come before one, counting at most ARGV[2]: Redis has no rank
# for streams, and counting here spares sending the entries. KEYS queue; ARGV entry id, the cap.
_ENTRIES_BEFORE = """
return #redis.call('XRANGE', KEYS[1], '-', '(' .. ARGV[1], 'COUNT', ARGV[2])
"""

# Drop index entries of runs found not running, unless a claim re-indexed them meanwhile
# (a claim writes a score past the cutoff). KEYS[1] leases; ARGV cutoff, then run ids.
_FORGET = """
for i = 2, #ARGV do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) <= tonumber(ARGV[1]) then redis.call('ZREM', KEYS[1], ARGV[i]) end
end
return 0
"""

# Delete the runs whose time in {P}:expiry has come, and every trace of them: the hash, the event
# log, the lifecycle deliveries, the idempotency key (unless it names another run now: one written
# with a TTL by an earlier version may have expired and been taken again), every index entry, the
# queue entry and the shares of a run that never finished. A member rescheduled meanwhile (a
# redelivery) is left alone. The keys built here are not in KEYS, but they carry the slot's hash
# tag, so on a Cluster they are in the slot of the declared keys. KEYS expiry, index, queue,
# shares, held, cancels, then the indexes of run ids; ARGV now, the slot's tag, then the members.
_PURGE = """
local now, tag = tonumber(ARGV[1]), ARGV[2]
local ids, members, doomed, owned, entries = {}, {}, {}, {}, {}
for i = 3, #ARGV do
  local due = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if due and tonumber(due) <= now then
    local run_id, caller = string.match(ARGV[i], '^(%S+) ?(.*)$')
    local run = tag .. ':run:' .. run_id
    local idem, owner, entry, counted = unpack(redis.call('HMGET', run, 'idem_key', 'owner', 'entry', 'shares'))
    if counted then
      for key in string.gmatch(counted, '[^\\n]+') do
        if redis.call('HINCRBY', KEYS[4], key, -1) <= 0 then redis.call('HDEL', KEYS[4], key) end
      end
    end
    if idem then
      local named = redis.call('GET', idem)
      if named and string.sub(named, 1, #run_id + 1) == run_id .. ' ' then doomed[#doomed + 1] = idem end
    end
    if owner then owned[#owned + 1] = owner .. ' ' .. run_id end
    if entry then entries[#entries + 1] = entry end
    if caller ~= '' then redis.call('ZREM', KEYS[2] .. ':' .. caller, run_id) end
    doomed[#doomed + 1] = run
    doomed[#doomed + 1] = tag .. ':events:' .. run_id
    doomed[#doomed + 1] = tag .. ':hooks:' .. run_id
    ids[#ids + 1] = run_id
    members[#members + 1] = ARGV[i]
  end
end
if #ids == 0 then return 0 end
redis.call('DEL', unpack(doomed))
if #entries > 0 then redis.call('XDEL', KEYS[3], unpack(entries)) end
if #owned > 0 then
  redis.call('ZREM', KEYS[5], unpack(owned))
  redis.call('ZREM', KEYS[6], unpack(owned))
end
redis.call('ZREM', KEYS[2], unpack(ids))
for k = 7, #KEYS do redis.call('ZREM', KEYS[k], unpack(ids)) end
redis.call('ZREM', KEYS[1], unpack(members))
return #ids
"""

# Schedule for deletion, now, the runs created UNFINISHED_TTL ago or more that have no
# expires_at: never finished, or finished with a webhook delivery still pending; a run with one
# but no {P}:expiry entry (its gateway killed before writing it, see _FINISH) gets its entry. The listing index
# orders every run by creation, so create needs no expiry entry of its own (#18); the sweep goes
# forward from where the last one stopped ({P}:counters swept), so the runs it leaves (finished,
# kept longer than UNFINISHED_TTL) are not looked at again. A hash gone already (a TTL of an earlier
# version, an eviction) is scheduled too, with no caller: its keys and index entries go, and its
# caller's index entry with the member an earlier version wrote. KEYS expiry, counters; ARGV now,
# the slot's tag, the score the sweep reached, then run ids.
_SWEEP = """
local tag = ARGV[2]
for i = 4, #ARGV do
  local run = tag .. ':run:' .. ARGV[i]
  local created, expires, caller = unpack(redis.call('HMGET', run, 'created_at', 'expires_at', 'caller'))
  if not created then
    redis.call('ZADD', KEYS[1], ARGV[1], ARGV[i] .. ' ')
  elseif not expires then
    redis.call('ZADD', KEYS[1], ARGV[1], ARGV[i] .. ' ' .. (caller or ''))
  else
    redis.call('ZADD', KEYS[1], 'NX', expires, ARGV[i] .. ' ' .. (caller or ''))
  end
end
redis.call('HSET', KEYS[2], 'swept', ARGV[3])
return 0
"""

#: What the renewal scripts' codes mean.
_LEASES = {0: Lease.LOST, 1: Lease.HELD, 2: Lease.CANCEL}

# Replies as they arrive with decode_responses off: bytes, never str.
Fields = Sequence[bytes | None]
Entry = tuple[bytes, dict[bytes, bytes] | None]


_UNAVAILABLE = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    OSError,
    redis_errors.ClusterError,
    redis_errors.TryAgainError,
    # A Cluster whose map, learned anew during a failover, has no master for the key's slot yet
    # (raised by _read_streams' own look-up of the node, and by redis-py once its retries are
    # spent). Not a RedisError, so it passed through as no StoreError at all.
    redis_errors.SlotNotCoveredError,
)

# uvloop's answer to a write on a connection whose server is gone (a Cluster master killed),
# which redis-py 8.1 lets through: RuntimeError("unable to perform operation on <TCPTransport
# closed=True ...>; the handler is closed") (uvloop/handles/handle.pyx, _ensure_alive). It has no
# class of its own, so its text is all that tells it from a RuntimeError that is a bug.
_CLOSED_HANDLE = re.compile(r"unable to perform operation on <\w+ closed=True\b.*; the handler is closed")


def _unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says Redis could not be reached (StoreUnavailable), not that a command failed."""
    if isinstance(exc, _UNAVAILABLE):
        return True
    return type(exc) is RuntimeError and _CLOSED_HANDLE.fullmatch(str(exc)) is not None


class _StoreErrors:
    """Redis's errors as the store's: StoreUnavailable when it cannot be reached, else StoreError.

    A class rather than a @contextmanager: it wraps every command, and a generator costs more.
    """

    def __enter__(self) -> None:
        pass

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        # BusyLoadingError (Redis still loading its data) is a ConnectionError. A Cluster missing a
        # master (CLUSTERDOWN, TRYAGAIN, retries spent while a replica takes over) passes too.
        if exc is not None and _unreachable(exc):
            raise StoreUnavailable(f"redis is unavailable: {exc}") from exc
        refused = isinstance(exc, redis_errors.OutOfMemoryError | redis_errors.ReadOnlyError)
        if refused or (isinstance(exc, redis_errors.ResponseError) and _error_code(exc) in _WRITES_REFUSED):
            # Like an unreachable Redis, it may pass (memory freed, disk fixed): retry later.
            raise StoreUnavailable(f"redis refuses writes: {exc}") from exc
        if isinstance(exc, redis_errors.RedisError):
            raise StoreError(f"redis command failed: {exc}") from exc


#: Stateless, so one instance serves every ``with``.
_STORE_ERRORS = _StoreErrors()


def _error_code(exc: redis_errors.ResponseError) -> str:
    # The first word of a Redis error reply is its code, the protocol's stable identifier;
    # redis-py has no exception class for BUSYGROUP or NOGROUP.
    return str(exc).split(" ", 1)[0]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _float(value: bytes | None) -> float | None:
    return None if value is None else float(value)


def _gone(expires_at: bytes | None) -> bool:
    """Whether a run is past its retention: gone to readers, though purge() may not have run yet."""
    return expires_at is not None and float(expires_at) <= now()


def _decode_result(fields: Fields) -> RunResult | None:
    status, headers, body, expires_at = fields
    if status is None or headers is None or _gone(expires_at):
        return None
    return RunResult(status=int(status), headers=load_headers(headers), body=body or b"")


def _decode_run(run_id: str, fields: Fields) -> Run | None:
    state, attempt, created_at, started_at, finished_at, upstream_status, error, request, *rest = fields
    caller, cancel, delivery, progress, hook_seq, expires_at, _ = rest
    if state is None or request is None or created_at is None or _gone(expires_at):
        return None
    return Run(
        run_id=run_id,
        state=RunState(state.decode()),
        request=load_request(request),
        created_at=float(created_at),
        started_at=_float(started_at),
        finished_at=_float(finished_at),
        attempt=int(attempt or 0),
        upstream_status=None if upstream_status is None else int(upstream_status),
        error=load_error(error),
        caller=caller.decode() if caller else "",
        cancel_requested=cancel == b"1",
        delivery=load_delivery(delivery),
        progress=load_progress(progress),
        hook_seq=int(hook_seq or 0),
    )


def _local_time(at: float, redis_now: float) -> float:
    """A time of Redis's clock (``at``), on this gateway's: the gateway times its own waits by
    it, while Redis's clock alone judges leases and heartbeats."""
    return now() + (at - redis_now)


def rank_band(priority: int) -> int:
    """Where a priority's scores in {P}:ranked start: higher priorities lower (taken first). The
    scripts add the next number of a counter, so that a level is first in, first out."""
    return (MAX_PRIORITY - priority) * _RANK_BAND


def _pairs(fields: dict[str, Any]) -> list[Any]:
    """HSET arguments for the fields that have a value."""
    return [item for name, value in fields.items() if value is not None for item in (name, value)]


def _outcome_fields(outcome: Outcome, at: float) -> dict[str, Any]:
    result = outcome.result
    return {
        "state": outcome.state.value,
        "finished_at": at,
        "upstream_status": outcome.upstream_status,
        "error": dump_error(outcome.error) if outcome.error else None,
        "result_status": result.status if result else None,
        "result_headers": dump_headers(result.headers) if result else None,
        "result_body": result.body if result else None,
    }


@dataclasses.dataclass(frozen=True)
class _Scripts:
    """The scripts called once per run or more, each by its SHA1 (EVALSHA).

    redis-py sends a script's text only when the server answers NOSCRIPT (its first use, after a
    restart or a failover), not with every call as EVAL does. On a Cluster the script is loaded
    on every primary, and the call goes to the slot of its keys.
    """

    create: AsyncScript
    claim: AsyncScript
    keep_alive: AsyncScript
    renew: AsyncScript
    renew_all: AsyncScript
    heartbeat: AsyncScript
    finish: AsyncScript
    requeue: AsyncScript
    cancel: AsyncScript
    take_delivery: AsyncScript
    record_delivery: AsyncScript
    append_output: AsyncScript
    report_progress: AsyncScript
    queue_hook: AsyncScript
    record_hook: AsyncScript
    redeliver: AsyncScript
    probe: AsyncScript
    clock: AsyncScript

    @classmethod
    def register(cls, client: RedisClient) -> _Scripts:
        script = client.register_script
        return cls(
            create=script(_CREATE),
            claim=script(_CLAIM),
            keep_alive=script(_KEEP_ALIVE),
            renew=script(_RENEW),
            renew_all=script(_RENEW_ALL),
            heartbeat=script(_HEARTBEAT),
            finish=script(_FINISH),
            requeue=script(_REQUEUE),
            cancel=script(_CANCEL),
            take_delivery=script(_TAKE_DELIVERY),
            record_delivery=script(_RECORD_DELIVERY),
            redeliver=script(_REDELIVER),
            append_output=script(_APPEND_OUTPUT),
            report_progress=script(_REPORT_PROGRESS),
            queue_hook=script(_QUEUE_HOOK),
            record_hook=script(_RECORD_HOOK),
            probe=script(_PROBE),
            clock=script(_NOW),
        )


class RedisRunStore:
    """Runs in Redis hashes, the queue in a stream, leases indexed in a sorted set."""

    def __init__(
        self,
        url: str,
        key_prefix: str,
        *,
        stale_entry_idle: float = STALE_ENTRY_IDLE,
        sealer: Sealer | None = None,
        strict: bool = False,
        identity: Identity | None = None,
        ranked: bool = False,
        slots: int = 1,
    ) -> None:
        self.prefix = key_prefix
        #: Claims look at {P}:ranked (runs of priority 1 and more): some route gives priorities,
        #: or some were found there. Otherwise the claim is the one stream read it always was.
        self.ranked = ranked
        self._claims = 0
        #: Per slot: each counts its own claims (its {P}:counters), the pace of its own queue.
        self.claim_rates = tuple(ClaimRate() for _ in range(slots))
        self.claim_rate = self.claim_rates[0]
        #: Checked and recorded at open (see _BIND); None for a gateway that executes no runs.
        self.identity = identity
        self._bound = identity is None
        #: Wait for a replica to have each new run before create() returns (WAIT 1).
        self.strict = strict
        self.sealer = sealer or Sealer()
        #: The hash tags the runs live under (store.slots): ``{P}`` alone by default; each run in
        #: one of them (slot_of its id), with the shared keys its scripts touch (see store/slots.py).
        self.slot_keys = tuple(SlotKeys(tag) for tag in slot_tags(key_prefix, slots))
        #: Keys of the deployment as a whole (deployment, progress_key) keep the tag ``{P}``.
        self.tag = tag = f"{{{key_prefix}}}"
        first = self.slot_keys[0]
        # The first slot's names, by their old names: with one slot, these are all the keys there are.
        self.queue = first.queue
        self.ranked_key = first.ranked
        self.counters = first.counters
        self.wake = first.wake
        self.deadlines = first.deadlines
        self.shares = first.shares
        self.leases = first.leases
        self.gateways = first.gateways
        self.held = first.held
        self.cancels = first.cancels
        self.index = first.index
        self.deliveries = first.deliveries
        self.hookruns = first.hookruns
        self.alive = first.alive
        self.expiry = first.expiry
        self.group = f"{key_prefix}:executors"
        self.cancel_channel = f"{key_prefix}:cancel"
        self.deployment_key = f"{tag}:deployment"
        self.progress_key_key = f"{tag}:progress_key"
        self._progress_key: bytes | None = None
        self.stale_entry_idle = stale_entry_idle
        self._next_stale_check = [0.0] * slots
        self._next_ranked_check = 0.0
        #: Per kind of work, the slot looked at first by the next call (see _rotated).
        self._rotation: dict[str, int] = {}
        # RESP2 keeps reply shapes the same across redis-py versions. No hidden retries: a
        # retried script whose first reply was lost would be refused by its own fence, so
        # callers decide (the executor retries StoreUnavailable, intake answers 503).
        options: dict[str, Any] = {
            "protocol": 2,
            "socket_connect_timeout": SOCKET_TIMEOUT,
            "retry": Retry(NoBackoff(), 0),
        }
        self._redis = connect(
            url, pool_size=POOL_SIZE, pool_wait=SOCKET_TIMEOUT, socket_timeout=SOCKET_TIMEOUT, **options
        )
        # Blocking reads (the queue, event logs followed by SSE clients and long-polls) hold a
        # connection each while they wait, so they get their own pool, and a longer timeout.
        self._blocking = connect(url, socket_timeout=MAX_CLAIM_WAIT + SOCKET_TIMEOUT, **options)
        # The heartbeat keeps every held run's lease: it must never wait behind the runs' own
        # traffic for a pooled connection (a wave of finishes once held it past the lease), so
        # it has a connection of its own, named so that CLIENT LIST tells it apart.
        self._lifeline = connect(url, socket_timeout=SOCKET_TIMEOUT, client_name=LIFELINE_NAME, **options)
        self._scripts = _Scripts.register(self._redis)
        # The scripts called once per run go to Redis in a few pipelines when many tasks call
        # them at once (batching.py): a burst of submissions, a wave of completions and of their
        # deliveries, and the output of many runs streaming at once. A Cluster's client routes
        # each call to its slot's primary itself: there, each call is sent alone.
        self._batches: list[ScriptBatch] = []
        self._create = self._batched(self._scripts.create)
        self._finish = self._batched(self._scripts.finish)
        self._take_delivery = self._batched(self._scripts.take_delivery)
        self._record_delivery = self._batched(self._scripts.record_delivery)
        self._append_output = self._batched(self._scripts.append_output, max_sends=1)
        #: Whether the client is a Cluster's: one command may then name keys of one slot only.
        self._cluster = isinstance(self._redis, RedisCluster)
        #: Owners whose heartbeat this store sent and Redis took: their claims are held under it.
        self._beating: set[str] = set()
        #: Per slot: {P}:held members of runs finished since the last heartbeat, which drops them,
        #: and their {P}:expiry entries, which it (or purge, whichever comes first) writes (_FINISH).
        self._finished_held: list[list[str]] = [[] for _ in self.slot_keys]
        self._finished_expiry: list[dict[str, float]] = [{} for _ in self.slot_keys]
        #: Request bodies read by claims, until their holder asks for them (request_body).
        self._bodies: dict[str, bytes] = {}
        #: Per slot: queue entries read by a claim its heartbeat refused (see _refused_entries).
        self._refused: list[list[Entry]] = [[] for _ in self.slot_keys]
        #: (owner, run id) of claims whose reply was lost: taken or not, the next claim looks.
        self._unsure: list[tuple[str, str]] = []
        #: Per claim() in progress (by its task: claims may run concurrently), the runs its claim
        #: scripts took so far. One claim runs several scripts (slot after slot, batch after batch):
        #: one failing must not lose the runs the others took, running under a live heartbeat
        #: with no task (see claim).
        self._taking: dict[asyncio.Task[Any] | None, list[Run]] = {}
        token = uuid.uuid4().hex
        #: Per slot: this process's wake stream for watch() (see the key schema).
        self.wake_keys = tuple(f"{keys.tag}:wake:{token}" for keys in self.slot_keys)
        self.wake_key = self.wake_keys[0]
        self._woken = ["0-0"] * slots  # per slot, the newest entry of its wake stream watch() has seen
        #: The log keys of the runs watch() last read, by run id, and the runs by key: a replica
        #: following a thousand runs reads all their logs every few milliseconds, and naming
        #: them anew each time cost more CPU than the read.
        self._watched: dict[str, str] = {}
        self._watched_runs: dict[str, str] = {}
        self._watching: tuple[int, ...] = ()  # the slots whose wake streams the current watch() waits on

    def keys_of(self, run_id: str) -> SlotKeys:
        """The keys of the slot a run lives in, found from its id alone (store/slots.py)."""
        return self.slot_keys[slot_of(run_id, len(self.slot_keys))]

    def _batched(self, script: AsyncScript, max_sends: int = MAX_SENDS) -> ScriptCall:
        if not isinstance(self._redis, aioredis.Redis):
            return script
        batch = ScriptBatch(self._redis, script, max_sends=max_sends)
        self._batches.append(batch)
        return batch

    def run_key(self, run_id: str) -> str:
        return self.keys_of(run_id).run(run_id)

    def events_key(self, run_id: str) -> str:
        return self.keys_of(run_id).events(run_id)

    def hooks_key(self, run_id: str) -> str:
        return self.keys_of(run_id).hooks(run_id)

    def caller_index(self, caller: str) -> str:
        """The first slot's index of a caller's runs (with one slot, the only one)."""
        return self.slot_keys[0].caller_index(caller)

    def _rotated(self, work: str) -> list[tuple[int, SlotKeys]]:
        """Every slot, starting at the next in turn for this kind of work: work taken slot by slot
        starves none."""
        start = self._rotation.get(work, 0)
        self._rotation[work] = (start + 1) % len(self.slot_keys)
        ordered = list(enumerate(self.slot_keys))
        return ordered[start:] + ordered[:start]

    def _close_args(self, run_id: str, event: dict[str, Any], retention: float, at: float | None = None) -> list[Any]:
        at = now() if at is None else at
        return [orjson.dumps(event), dump_delivery(pending_delivery(at)), at, max(1, int(retention * 1000)), run_id]

    async def open(self) -> None:
        with _STORE_ERRORS:
            await self._create_group()
            # Made at once, as the stream is: a deployment's standing keys are there from its start.
            for keys in self.slot_keys:
                await self._redis.hsetnx(keys.counters, "claimed", 0)
        await self._bind()

    async def _bind(self) -> None:
        """Claim the keys for this gateway's deployment and upstream (ConfigError if they are another's)."""
        if self._bound or self.identity is None:
            return
        identity = self.identity
        slots = len(self.slot_keys)
        args = [identity.upstream, identity.deployment, "1" if identity.allow_upstream_change else "0", slots]
        with _STORE_ERRORS:
            found = await self._redis.eval(_BIND, 1, self.deployment_key, *args)
            legacy = self.prefix != LEGACY_PREFIX and await self._redis.exists(f"{{{LEGACY_PREFIX}}}:index")
        if found is not None and found[0] == b"slots":
            raise ConfigError(
                "store.slots",
                f"is {slots}, but the runs under key prefix {self.prefix!r} are spread over {_text(found[1])} slots; "
                "changing it strands runs (see docs/scaling.md#slots)",
            )
        if found is not None:
            upstream, deployment = (_text(value) for value in found)
            raise identity.conflict(f"Redis key prefix {self.prefix!r}", deployment, upstream)
        self._bound = True
        if legacy:
            logger.warning(
                "this Redis holds runs under the key prefix %r, which this gateway (prefix %r) does not serve; "
                "set store.key_prefix: %s to serve them (see docs/fleets.md)",
                LEGACY_PREFIX,
                self.prefix,
                LEGACY_PREFIX,
            )

    async def _create_group(self) -> None:
        # From id 0, so that entries added before the group existed are delivered too. The wake
        # stream only where priorities are in use: a deployment without them keeps the keys it had.
        for keys in self.slot_keys:
            await self._create_groups(keys)

    async def _create_groups(self, keys: SlotKeys) -> None:
        for stream in (keys.queue, keys.wake) if self.ranked else (keys.queue,):
            try:
                await self._redis.xgroup_create(stream, self.group, id="0", mkstream=True)
            except redis_errors.ResponseError as exc:
                if _error_code(exc) != "BUSYGROUP":  # another replica made it first
                    raise

    async def close(self) -> None:
        for batch in self._batches:
            await batch.close()
        await self._index_finished()
        for client in (self._redis, self._blocking, self._lifeline):
            await close_client(client)

    async def ping(self) -> None:
        with _STORE_ERRORS:
            # Every slot: on a Cluster, each may be on another master, and all must take writes.
            for keys in self.slot_keys:
                await self._scripts.probe([keys.probe], [])
        try:
            # Redis may have been down when the gateway started: the check is made once it is up.
            await self._bind()
        except ConfigError as exc:
            raise StoreError(str(exc)) from exc

    async def create(
        self,
        run: Run,
        body: bytes,
        *,
        idempotency: Idempotency | None = None,
        max_queued: int = 0,
        shares: Sequence[Share] = (),
    ) -> Created:
        if len(self.slot_keys) > 1:
            run = self._placed(run, idempotency, shares)
        request, secrets, webhook_url = self.sealer.split(run.request)
        slot = self.keys_of(run.run_id)
        keys = [
            slot.run(run.run_id),
            slot.events(run.run_id),
            slot.queue,
            slot.index,
            slot.caller_index(run.caller),
            slot.expiry,
            slot.ranked,
            slot.wake,
            slot.deadlines,
            slot.shares,
            slot.counters,
        ]
        priority = run.request.priority
        if max_queued > 0 and len(self.slot_keys) > 1:
            # The check is one slot's queue, in the step that adds to it: each takes its part.
            max_queued = -(-max_queued // len(self.slot_keys))
        event = orjson.dumps(state_event(RunState.QUEUED, 0, run.created_at))
        args: list[Any] = [
            run.run_id,
            run.created_at,
            "1" if self.ranked or priority > 0 else "0",
            max_queued,
            event,
            run.state.value,
            run.attempt,
            "" if run.started_at is None else run.started_at,
            run.caller,
            "1" if run.request.hooks(COMPLETED) else "",
            secrets or b"",
            webhook_url or b"",
            ",".join(run.request.lifecycle_events),
            dump_request(request),
            body,
            priority,
            rank_band(priority),
            "" if run.request.queue_deadline is None else run.request.queue_deadline,
            len(shares),
            *(part for share in shares for part in (share.key, share.limit)),
            WAKE_MAXLEN,
        ]
        if idempotency is not None:
            keys.append(slot.idem(idempotency.key))
            args.append(f"{run.run_id} {idempotency.fingerprint}".encode())
        with _STORE_ERRORS:
            if self.strict:
                reply, confirmed = await self._create_confirmed(keys, args)
            else:
                reply, confirmed = cast(list[bytes], await self._create(keys, args)), 0
            if self.strict and reply[0] == b"created" and confirmed < 1:
                # The run is on the primary but no replica confirmed it: not the promised
                # durability, so no 202. A client retrying with its Idempotency-Key is safe.
                raise StoreUnavailable("no replica confirmed the run in time (store.durability: strict)")
        if reply[0] == b"full":
            raise QueueFull()
        if reply[0] == b"share":
            share = shares[int(reply[1]) - 1]
            raise ShareExceeded(share.key, share.limit, share.where)
        if reply[0] == b"replay" and idempotency is not None:
            run_id, _, fingerprint = reply[1].decode().partition(" ")
            return Created(run_id, replayed=True, same_request=fingerprint == idempotency.fingerprint)
        return Created(run.run_id)

    async def _create_confirmed(self, keys: Sequence[str], args: Sequence[Any]) -> tuple[list[bytes], int]:
        """The create script and a WAIT for one replica, on one connection: WAIT counts only the
        writes of the connection it is sent on, so on any other it would confirm nothing."""
        if not isinstance(self._redis, aioredis.Redis):
            return await self._create_confirmed_on_cluster(keys, args)
        pipe = self._redis.pipeline(transaction=False)
        await self._scripts.create(keys, args, client=pipe)  # queued; loaded first if Redis lacks it
        pipe.wait(1, STRICT_WAIT_MS)
        reply, confirmed = await pipe.execute()
        return cast(list[bytes], reply), int(confirmed)

    async def _create_confirmed_on_cluster(self, keys: Sequence[str], args: Sequence[Any]) -> tuple[list[bytes], int]:
        """The same on a Cluster: one pipeline, both commands sent to the master of the run's slot,
        which the client sends on one connection of that node. Without redirections: a pipeline
        that follows a MOVED sends each command alone, the WAIT on any connection."""
        cluster = cast(RedisCluster, self._redis)
        await cluster.initialize()  # a failed command asks for the nodes to be learned anew
        node = cluster.get_node_from_key(keys[0])
        script = self._scripts.create
        for _ in range(2):
            pipe = cluster.pipeline()
            pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
            pipe.execute_command("WAIT", 1, STRICT_WAIT_MS, target_nodes=node)
            reply, confirmed = await pipe.execute(raise_on_error=False, allow_redirections=False)
            if isinstance(reply, redis_errors.NoScriptError):
                await cluster.script_load(script.script)  # on every primary; the WAIT ran alone
                continue
            if isinstance(reply, redis_errors.MovedError | redis_errors.AskError):
                # The slot moved (a failover, a resharding): learn where, and let the client retry.
                await cluster.nodes_manager.initialize()
                raise StoreUnavailable(f"the run's slot moved: {reply}")
            for result in (reply, confirmed):
                if isinstance(result, Exception):
                    raise result
            return cast(list[bytes], reply), int(confirmed)
        raise StoreUnavailable("the create script could not be loaded")

    def _placed(self, run: Run, idempotency: Idempotency | None, shares: Sequence[Share]) -> Run:
        """The run, with a new id if need be, so that it lives in the slot whose keys its create
        script must check in the same step: its caller's when it counts against shares (a share's
        count is one key), else its idempotency key's (the key's replays must find it). Any other
        run stays where its id puts it."""
        count = len(self.slot_keys)
        if shares:
            wanted = slot_of(run.caller, count)
        elif idempotency is not None:
            wanted = slot_of(idempotency.key, count)
        else:
            return run
        run_id = run.run_id
        while slot_of(run_id, count) != wanted:  # 1 in ``count`` ids fits: a few tries
            run_id = new_run_id()
        return dataclasses.replace(run, run_id=run_id)

    async def get(self, run_id: str) -> Run | None:
        with _STORE_ERRORS:
            fields = cast(Fields, await self._redis.hmget(self.run_key(run_id), _RUN_FIELDS))
        return _decode_run(run_id, fields)

    async def request_body(self, run_id: str) -> bytes | None:
        body = self._bodies.pop(run_id, None)
        if body is not None:
            return body
        with _STORE_ERRORS:
            state, body = cast(Fields, await self._redis.hmget(self.run_key(run_id), ("state", "body")))
        # A finished run's body is emptied rather than deleted (see _FINISH): it has none.
        return body if state is not None and not RunState(state.decode()).is_final else None

    async def result(self, run_id: str) -> RunResult | None:
        with _STORE_ERRORS:
            return _decode_result(cast(Fields, await self._redis.hmget(self.run_key(run_id), _RESULT_FIELDS)))

    async def claim(self, owner: str, limit: int, wait: float, lease: float) -> list[Run]:
        if limit <= 0:
            return []
        if not self._bound:
            # Redis was down when the gateway started: no run is taken before the keys are known
            # to be this deployment's and upstream's (a conflict keeps refusing, as readyz says).
            try:
                await self._bind()
            except ConfigError as exc:
                raise StoreError(str(exc)) from exc
        with _STORE_ERRORS:
            if self._unsure and (found := await self._claimed_unseen(owner)):
                return found
            task = asyncio.current_task()
            taken: list[Run] = []
            self._taking[task] = taken
            try:
                if len(self.slot_keys) == 1:
                    await self._claim_slot(0, owner, limit, wait, lease)
                else:
                    await self._claim_spread(owner, limit, wait, lease)
            except Exception as exc:
                if taken and _unreachable(exc):
                    # A Cluster master gone after the claim took runs on the others (the read
                    # of its slot failed): those runs are running under this owner, so they go
                    # to the executor now; the failure is met again by the next call.
                    logger.warning("a claim failed after it took %d runs, held all the same: %s", len(taken), exc)
                    return taken
                # Any other error surfaces; the next claim looks at what this one took, as after
                # a lost reply (_claimed_unseen).
                self._unsure += [(owner, run.run_id) for run in taken]
                raise
            finally:
                del self._taking[task]
            return taken

    async def _read_streams(
        self, client: RedisClient, streams: Mapping[Any, Any], *, group: bool, count: int | None, block: int | None
    ) -> Any:
        """XREADGROUP (``group``) or XREAD of streams of one slot.

        On a Cluster, sent to the node holding the slot: redis-py finds the keys of these commands
        by asking its default node (COMMAND GETKEYS), and, without retries (see __init__), keeps
        asking it after a failover took it away, so the reads failed for good (redis-py 8.1).
        """
        if not self._cluster:
            if group:
                return await client.xreadgroup(self.group, _CONSUMER, dict(streams), count=count, block=block)
            return await client.xread(dict(streams), count=count, block=block)
        pieces: list[Any] = [b"GROUP", self.group, _CONSUMER] if group else []
        if count is not None:
            pieces += [b"COUNT", count]
        if block is not None:
            pieces += [b"BLOCK", block]
        pieces += [b"STREAMS", *streams.keys(), *streams.values()]
        cluster = cast(RedisCluster, client)
        await cluster.initialize()  # a failed command asks for the nodes to be learned anew
        node = cluster.get_node_from_key(next(iter(streams)))
        return await cluster.execute_command("XREADGROUP" if group else "XREAD", *pieces, target_nodes=node)

    async def _claim_spread(self, owner: str, limit: int, wait: float, lease: float) -> list[Run]:
        """Claim from the slots in the order of what waits in them, highest priority first, then
        oldest first; with none found, wait on one, a different one each time, until ``wait``.

        A blocking read names one slot's queue (on a Cluster a command names one slot's keys), so
        each wait lasts at most SPREAD_WAIT: a run queued meanwhile in another slot is found by the
        next look at each.
        """
        deadline = time.monotonic() + wait
        if not self.ranked:
            await self._found_ranked()  # before the order: a slot may hold ranked runs alone
        while True:
            rotated = self._rotated("claim")
            runs: list[Run] = []
            for index in await self._waiting_order(rotated):
                runs += await self._claim_slot(index, owner, limit - len(runs), 0, lease)
                if len(runs) >= limit:
                    return runs
            left = deadline - time.monotonic()
            if runs or left <= 0:
                return runs
            runs = await self._claim_slot(rotated[0][0], owner, limit, min(left, SPREAD_WAIT), lease)
            if runs:
                return runs

    async def _waiting_order(self, rotated: list[tuple[int, SlotKeys]]) -> list[int]:
        """The slots with work waiting, ordered by the first run each would give: its priority
        (its band in {P}:ranked), then the age of the oldest entry of its queue (the stream holds
        only work not yet taken, and its ids are times), then the rotation. One round trip."""
        if self._cluster:
            # Commands of their own, all at once: a Cluster client that finds a master gone learns
            # the new one from a failed command, but not from a failed pipeline (redis-py 8.1).
            reads = [self._heads(cast(Any, self._redis), slot) for _, slot in rotated]
            replies = await asyncio.gather(*(read for pair in reads for read in pair))
        else:
            async with self._redis.pipeline(transaction=False) as pipe:
                for _, slot in rotated:
                    self._heads(pipe, slot)
                replies = await pipe.execute()
        step = 2 if self.ranked else 1
        order: list[tuple[int, tuple[int, ...], int]] = []
        for position, (index, _) in enumerate(rotated):
            queued = cast(list[Entry], replies[step * position])
            head = cast(list[tuple[bytes, float]], replies[step * position + 1]) if self.ranked else []
            if not queued and not head and not self._refused[index]:
                continue
            band = int(head[0][1]) // _RANK_BAND if head else MAX_PRIORITY + 1
            age = tuple(int(part) for part in queued[0][0].split(b"-")) if queued else (2**63,)
            order.append((band, age, position))
        return [rotated[position][0] for _, _, position in sorted(order)]

    def _heads(self, client: Any, slot: SlotKeys) -> list[Any]:
        """The first entry of the slot's queue and, with priorities, its highest ranked run."""
        heads = [client.xrange(slot.queue, count=1)]
        if self.ranked:
            heads.append(client.zrange(slot.ranked, 0, 0, withscores=True))
        return heads

    async def _claim_slot(self, index: int, owner: str, limit: int, wait: float, lease: float) -> list[Run]:
        keys = self.slot_keys[index]
        try:
            if self.ranked or await self._found_ranked():
                return await self._claim_ranked(index, owner, limit, wait, lease)
            entries = self._refused_entries(index, limit) or await self._stale_entries(index, limit)
            entries = entries or await self._read_queue(keys, limit, wait)
        except redis_errors.ResponseError as exc:
            if _error_code(exc) != "NOGROUP":
                raise
            # Redis lost its data (restarted without persistence, flushed): start again.
            await self._create_groups(keys)
            return []
        if not entries:
            return []
        return await self._take(index, entries, owner, lease)

    async def _read_queue(self, keys: SlotKeys, limit: int, wait: float) -> list[Entry]:
        # BLOCK 0 would mean forever, so "do not wait" is no BLOCK at all.
        block = max(1, int(min(wait, MAX_CLAIM_WAIT) * 1000)) if wait > 0 else None
        reply = await self._read_streams(self._blocking, {keys.queue: ">"}, group=True, count=limit, block=block)
        streams = cast(list[tuple[bytes, list[Entry]]], reply or [])
        return [entry for _, entries in streams for entry in entries]

    async def _found_ranked(self) -> bool:
        """Whether runs of priority 1 and more wait although no route of this gateway gives any
        (the routes changed with runs queued): then it claims them too, so none is stranded.
        Looked for once per idle period, as stale entries are."""
        if time.monotonic() < self._next_ranked_check:
            return False
        self._next_ranked_check = time.monotonic() + self.stale_entry_idle
        for keys in self.slot_keys:
            if await self._redis.zcard(keys.ranked):
                self.ranked = True
                await self._create_group()
                break
        return self.ranked

    async def _claim_ranked(self, index: int, owner: str, limit: int, wait: float, lease: float) -> list[Run]:
        """Claim with priorities: {P}:ranked highest first, then {P}:queue (priority 0); every
        STARVATION_ROUND-th call takes the oldest run of the lowest non-empty priority first."""
        keys = self.slot_keys[index]
        self._claims += 1
        runs = await self._claim_bottom(index, owner, lease) if self._claims % STARVATION_ROUND == 0 else []
        room = limit - len(runs)
        if room > 0:
            top = cast(list[bytes], await self._redis.zrange(keys.ranked, 0, room - 1))
            runs += await self._take_ranked(keys, [member.decode() for member in top], owner, lease)
        room = limit - len(runs)
        if room <= 0:
            return runs
        entries = await self._stale_entries(index, room)
        if not entries:
            # Blocks on both streams only when nothing was found: a wake entry means a ranked run
            # arrived, taken by the next call (the executor calls again at once).
            block = max(1, int(min(wait, MAX_CLAIM_WAIT) * 1000)) if wait > 0 and not runs else None
            streams: dict[Any, Any] = {keys.queue: ">", keys.wake: ">"}
            reply = await self._read_streams(self._blocking, streams, group=True, count=room, block=block)
            for stream, read in cast(list[tuple[bytes, list[Entry]]], reply or []):
                if stream.decode() == keys.wake:
                    wakes = [entry_id for entry_id, _ in read]
                    async with self._redis.pipeline(transaction=False) as pipe:
                        pipe.xack(keys.wake, self.group, *wakes)
                        pipe.xdel(keys.wake, *wakes)
                        await pipe.execute()
                else:
                    entries = read
        return runs + (await self._take(index, entries, owner, lease) if entries else [])

    async def _claim_bottom(self, index: int, owner: str, lease: float) -> list[Run]:
        """The oldest run of the lowest priority that has queued runs, claimed (the starvation round)."""
        keys = self.slot_keys[index]
        if await self._redis.xlen(keys.queue):
            reply = await self._read_streams(self._blocking, {keys.queue: ">"}, group=True, count=1, block=None)
            entries = [entry for _, read in cast(list[tuple[bytes, list[Entry]]], reply or []) for entry in read]
            return await self._take(index, entries, owner, lease) if entries else []
        last = cast(list[tuple[bytes, float]], await self._redis.zrange(keys.ranked, -1, -1, withscores=True))
        if not last:
            return []
        band = int(last[0][1]) // _RANK_BAND * _RANK_BAND
        oldest = cast(list[bytes], await self._redis.zrangebyscore(keys.ranked, band, "+inf", start=0, num=1))
        return await self._take_ranked(keys, [member.decode() for member in oldest], owner, lease)

    async def _take_ranked(self, keys: SlotKeys, run_ids: list[str], owner: str, lease: float) -> list[Run]:
        runs: list[Run] = []
        for start in range(0, len(run_ids), CLAIM_BATCH):
            batch = run_ids[start : start + CLAIM_BATCH]
            runs += await self._claim_script(keys, batch, [], owner, lease, ranked=True) or []
        return runs

    def _refused_entries(self, index: int, limit: int) -> list[Entry]:
        """Entries read by a claim its heartbeat refused: still this gateway's to take (unacked)."""
        entries, self._refused[index] = self._refused[index][:limit], self._refused[index][limit:]
        return entries

    async def _stale_entries(self, index: int, limit: int) -> list[Entry]:
        """Entries whose reader died before acking them; looked for once per idle period."""
        if time.monotonic() < self._next_stale_check[index]:
            return []
        self._next_stale_check[index] = time.monotonic() + self.stale_entry_idle
        idle_ms = int(self.stale_entry_idle * 1000)
        queue = self.slot_keys[index].queue
        reply = await self._redis.xautoclaim(queue, self.group, _CONSUMER, idle_ms, "0-0", count=limit)
        return cast(list[Entry], reply[1])

    async def _take(self, index: int, entries: list[Entry], owner: str, lease: float) -> list[Run]:
        runs: list[Run] = []
        for start in range(0, len(entries), CLAIM_BATCH):
            runs += await self._take_batch(index, entries[start : start + CLAIM_BATCH], owner, lease)
        return runs

    async def _take_batch(self, index: int, entries: list[Entry], owner: str, lease: float) -> list[Run]:
        """One claim script for a batch of entries read: one round trip, however many runs."""
        run_ids = [fields[b"run_id"].decode() for _, fields in entries if fields and b"run_id" in fields]
        # Skipped entries (cancelled, expired or duplicate runs) are acked too.
        ids = [entry_id for entry_id, _ in entries]
        runs = await self._claim_script(self.slot_keys[index], run_ids, ids, owner, lease)
        if runs is None:
            # The entries, unacked, are taken again by the next claim, with a lease of their own.
            self._refused[index] += entries
            return []
        return runs

    async def _claim_script(
        self, slot: SlotKeys, run_ids: list[str], ids: list[bytes], owner: str, lease: float, *, ranked: bool = False
    ) -> list[Run] | None:
        """The claim script for these runs of one slot (and its queue entries, acked): None when
        the owner's heartbeat ran out (or Redis lost it), and nothing was written."""
        started = now()
        beating = owner in self._beating
        keys = [slot.queue, slot.leases, slot.held, slot.gateways, slot.ranked, slot.counters]
        for run_id in run_ids:
            keys += (slot.run(run_id), slot.events(run_id))
        args: list[Any] = [
            started,
            owner,
            lease,
            self.group,
            "1" if beating else "0",
            "1" if ranked else "0",
            len(ids),
            *ids,
            *run_ids,
        ]
        try:
            replies = await self._scripts.claim(keys, args)
        except Exception as exc:
            if _unreachable(exc):
                # The script may have run, its reply lost: those runs would be running under this
                # owner, whose heartbeat goes on, and held by nobody. The next claim looks (_unsure).
                self._unsure += [(owner, run_id) for run_id in run_ids]
            raise
        if replies is None:
            self._beating.discard(owner)
            logger.warning("claims refused: the heartbeat of %s ran out", owner)
            return None
        *claimed, total = cast(list[Any], replies)
        self.claim_rates[self.slot_keys.index(slot)].observe(int(total), started)
        runs = self._claimed(run_ids, cast(list[Fields | None], claimed))
        self._taking[asyncio.current_task()] += runs
        return runs

    def _claimed(self, run_ids: list[str], replies: list[Fields | None]) -> list[Run]:
        """The runs of claim replies (_CLAIM_FIELDS each, or None), their bodies kept for request_body."""
        runs = []
        for run_id, fields in zip(run_ids, replies, strict=True):
            run = _decode_run(run_id, fields[: len(_RUN_FIELDS)]) if fields else None
            if run is not None and fields is not None:
                secrets, body = fields[len(_RUN_FIELDS) : len(_CLAIM_FIELDS)]
                if body is not None:
                    self._bodies[run_id] = body
                # Only the holder of a run ever sees its credentials, to replay them.
                runs.append(dataclasses.replace(run, request=self.sealer.join(run.request, secrets)))
        return runs

    async def _claimed_unseen(self, owner: str) -> list[Run]:
        """The runs a claim whose reply was lost did take for ``owner``: running under it, at the
        attempt that claim made. Without this, they stay running under a live heartbeat, held by
        nobody (seen when a Cluster's master failed over in the middle of a claim)."""
        unsure = list(self._unsure)
        run_ids = [run_id for holder, run_id in unsure if holder == owner]
        async with self._redis.pipeline(transaction=False) as pipe:
            for run_id in run_ids:
                pipe.hmget(self.run_key(run_id), (*_CLAIM_FIELDS, "owner"))
            replies = cast(list[Fields], await pipe.execute() if run_ids else [])
        del self._unsure[: len(unsure)]  # looked at (a failed look leaves them for the next)
        taken = [fields if fields[0] == b"running" and fields[-1] == owner.encode() else None for fields in replies]
        if any(taken):
            logger.warning("claims whose reply was lost took %d runs: held now", sum(1 for t in taken if t))
        return self._claimed(run_ids, taken)

    async def renew(self, run_id: str, attempt: int, lease: float) -> Lease:
        with _STORE_ERRORS:
            slot = self.keys_of(run_id)
            renewed = await self._scripts.renew([slot.run(run_id), slot.leases], [attempt, lease, run_id])
        return _LEASES[int(renewed)]

    async def renew_all(self, held: Sequence[tuple[str, int]], lease: float) -> list[Lease]:
        # One script per slot (and batch): a script names the keys of one slot.
        by_slot: dict[int, list[int]] = {}
        for position, (run_id, _) in enumerate(held):
            by_slot.setdefault(slot_of(run_id, len(self.slot_keys)), []).append(position)
        codes: list[int] = [0] * len(held)
        with _STORE_ERRORS:
            for index, positions in by_slot.items():
                slot = self.slot_keys[index]
                for start in range(0, len(positions), RENEW_BATCH):
                    batch = [held[position] for position in positions[start : start + RENEW_BATCH]]
                    keys = [slot.leases, *(slot.run(run_id) for run_id, _ in batch)]
                    args = [lease, *(part for run_id, attempt in batch for part in (run_id, attempt))]
                    replies = cast(list[int], await self._scripts.renew_all(keys, args))
                    for position, code in zip(positions[start : start + RENEW_BATCH], replies, strict=True):
                        codes[position] = int(code)
        return [_LEASES[code] for code in codes]

    async def heartbeat(self, quiet: float, grace: float) -> float:
        resumes: list[float] = []
        with _STORE_ERRORS:
            # Each slot keeps its own (its scripts judge leases by it); the latest grace holds.
            for slot in self.slot_keys:
                redis_now, resume = await self._scripts.heartbeat([slot.alive], [quiet, grace])
                resumes.append(_local_time(float(resume), float(redis_now)))
        return max(resumes)

    async def keep_alive(self, owner: str, lease: float, quiet: float, grace: float) -> Liveness:
        known = "1" if owner in self._beating else "0"
        args: list[Any] = [quiet, grace, owner, lease, known]
        resumes: list[float] = []
        lost = False
        cancels: list[str] = []
        with _STORE_ERRORS:
            # One script per slot, each a heartbeat in that slot's {P}:gateways: N writes per
            # interval, however many runs are held. Lost in one slot is lost: the executor lets
            # go of every run, and those in other slots are recovered once this name lapses there.
            for slot in self.slot_keys:
                keys = [slot.alive, slot.gateways, slot.cancels]
                reply = await self._scripts.keep_alive(keys, args, client=self._lifeline)
                redis_now, resume, status, *asked = (_text(part) for part in reply)
                resumes.append(_local_time(float(resume), float(redis_now)))
                lost = lost or status == "lost"
                cancels += asked
        await self._index_finished()
        if lost:
            self._beating.discard(owner)
            return Liveness(max(resumes), lost=True)
        self._beating.add(owner)
        return Liveness(max(resumes), cancels=tuple(cancels))

    async def _index_finished(self) -> None:
        """The index writes of the runs finished since the last call (see _FINISH): their {P}:held
        entries dropped, their {P}:expiry entries written, FINISHED_BATCH members per command."""
        for index, slot in enumerate(self.slot_keys):
            # Taken out before the first await: runs finishing meanwhile, and a heartbeat and a
            # purge writing at once, each find only what nobody has taken.
            members, self._finished_held[index] = self._finished_held[index], []
            expiries, self._finished_expiry[index] = self._finished_expiry[index], {}
            try:
                while members:
                    with _STORE_ERRORS:
                        await self._redis.zrem(slot.held, *members[:FINISHED_BATCH])
                    del members[:FINISHED_BATCH]
                while expiries:
                    taken = dict(itertools.islice(expiries.items(), FINISHED_BATCH))
                    with _STORE_ERRORS:
                        await self._redis.zadd(slot.expiry, taken)
                    for member in taken:
                        del expiries[member]
            except StoreError as exc:
                # The heartbeat itself went through: what is left waits for the next call.
                logger.warning("cannot index the runs finished lately: %s", exc)
                self._finished_held[index] += members
                self._finished_expiry[index] |= expiries
                return

    async def finish(
        self, run_id: str, attempt: int, outcome: Outcome, retention: float, take: float | None = None
    ) -> Finished | None:
        if not outcome.state.is_final:
            raise ValueError(f"a run cannot finish as {outcome.state}")
        at = now()
        event = state_event(outcome.state, attempt, at, outcome)
        lease_until = None if take is None else at + take
        taken: list[Any] = ["", ""]
        if lease_until is not None:
            taken = [dump_delivery(Delivery(DeliveryState.DELIVERING, next_attempt_at=lease_until)), lease_until]
        fields = _pairs(_outcome_fields(outcome, at))
        args = [*self._close_args(run_id, event, retention, at), attempt, *taken, *fields]
        slot = self.keys_of(run_id)
        keys = (
            slot.run(run_id),
            slot.events(run_id),
            slot.deliveries,
            slot.expiry,
            slot.leases,
            slot.held,
            slot.cancels,
            slot.shares,
            slot.hooks(run_id),
        )
        self._bodies.pop(run_id, None)
        with _STORE_ERRORS:
            reply = await self._finish(keys, args)
        if not reply:
            return None
        parts = cast(list[bytes], reply)
        owner, expires, caller = (_text(part) for part in parts[:3])
        index = slot_of(run_id, len(self.slot_keys))
        if owner:
            self._finished_held[index].append(f"{owner} {run_id}")
        if expires:
            self._finished_expiry[index][f"{run_id} {caller}"] = float(expires)
        if len(parts) == 5 and lease_until is not None:
            return finished_taking(self.sealer, at, int(parts[3]), parts[4], lease_until)
        return Finished(at)

    async def requeue(self, run_id: str, attempt: int) -> bool:
        with _STORE_ERRORS:
            # Its index entry stays: expired() drops it unless a new claim re-indexed it.
            event = orjson.dumps(state_event(RunState.QUEUED, attempt, now()))
            slot = self.keys_of(run_id)
            keys = (
                slot.run(run_id),
                slot.events(run_id),
                slot.queue,
                slot.ranked,
                slot.wake,
                slot.counters,
                slot.held,
            )
            bands = [rank_band(priority) for priority in range(1, MAX_PRIORITY + 1)]
            requeued = await self._scripts.requeue(keys, [attempt, event, run_id, *bands, WAKE_MAXLEN])
        return bool(requeued)

    async def append_output(
        self, run_id: str, attempt: int, events: list[dict[str, Any]], drop: list[str]
    ) -> list[str] | None:
        args: list[bytes | str | int] = [attempt, len(events), *(orjson.dumps(event) for event in events), *drop]
        with _STORE_ERRORS:
            reply = await self._append_output([self.run_key(run_id), self.events_key(run_id)], args)
        return [entry_id.decode() for entry_id in reply] if isinstance(reply, list) else None

    async def report_progress(
        self, run_id: str, attempt: int, event: dict[str, Any], kept: int, hook: bytes, max_hooks: int
    ) -> str | None:
        slot = self.keys_of(run_id)
        keys = (slot.run(run_id), slot.events(run_id), slot.hooks(run_id), slot.hookruns)
        args: list[bytes | int | float | str] = [attempt, orjson.dumps(event), kept, hook, max_hooks, now(), run_id]
        with _STORE_ERRORS:
            reply = await self._scripts.report_progress(keys, args)
        return reply.decode() if isinstance(reply, bytes) else None

    async def add_hook(self, run_id: str, attempt: int, event: str, body: bytes, max_hooks: int) -> bool:
        slot = self.keys_of(run_id)
        keys = (slot.run(run_id), slot.hooks(run_id), slot.hookruns)
        with _STORE_ERRORS:
            return bool(await self._scripts.queue_hook(keys, [attempt, event, body, max_hooks, now(), run_id]))

    async def due_hooks(self, limit: int, lease: float) -> list[DueHook]:
        due: list[DueHook] = []
        for _, slot in self._rotated("hooks"):
            if len(due) >= limit:
                break
            due += await self._due_hooks(slot, limit - len(due), lease)
        return due

    async def _due_hooks(self, slot: SlotKeys, limit: int, lease: float) -> list[DueHook]:
        at = now()
        with _STORE_ERRORS:
            members = await self._redis.zrangebyscore(slot.hookruns, "-inf", at, start=0, num=limit)
            run_ids = [member.decode() for member in cast(list[bytes], members)]
            if not run_ids:
                return []
            async with self._redis.pipeline(transaction=False) as pipe:
                for run_id in run_ids:
                    keys = (slot.run(run_id), slot.hooks(run_id), slot.hookruns)
                    pipe.eval(_TAKE_HOOK, 3, *keys, at, at + lease, run_id)
                replies = await pipe.execute()
            taken = [(run_id, reply) for run_id, reply in zip(run_ids, replies, strict=True) if reply]
            async with self._redis.pipeline(transaction=False) as pipe:
                for run_id, _ in taken:
                    pipe.hmget(slot.run(run_id), _RUN_FIELDS)
                    pipe.hget(slot.run(run_id), "webhook_url")
                runs = await pipe.execute() if taken else []
        due = []
        for index, (run_id, (token, raw)) in enumerate(taken):
            run = _decode_run(run_id, runs[2 * index])
            if run is not None:
                run = dataclasses.replace(run, request=self.sealer.join_webhook(run.request, runs[2 * index + 1]))
                due.append(DueHook(run, load_hook(raw), int(token)))
        return due

    async def record_hook(self, run_id: str, token: int, seq: int, attempts: int, next_at: float | None) -> bool:
        slot = self.keys_of(run_id)
        keys = (slot.run(run_id), slot.hooks(run_id), slot.hookruns, slot.deliveries)
        args = [token, seq, attempts, "" if next_at is None else next_at, now(), run_id]
        with _STORE_ERRORS:
            return bool(await self._scripts.record_hook(keys, args))

    async def progress_key(self) -> bytes:
        if self._progress_key is None:
            with _STORE_ERRORS:
                # Whichever gateway comes first makes the key; the others read it.
                await self._redis.set(self.progress_key_key, secrets.token_bytes(32), nx=True)
                key = await self._redis.get(self.progress_key_key)
            if not isinstance(key, bytes) or not key:
                raise StoreError("the progress key vanished as it was made")
            self._progress_key = key
        return self._progress_key

    async def expired(self, limit: int) -> list[Run]:
        if limit <= 0:
            return []
        found: list[Run] = []
        with _STORE_ERRORS:
            for _, slot in self._rotated("expired"):
                # Judged by Redis's clock, which wrote them (_CLOCK): a script, so that on a
                # Cluster it is the clock of the node holding the slot.
                cutoff = float(await self._scripts.clock([slot.alive], []))
                if len(found) < limit:
                    found += await self._lapsed_leases(slot, cutoff, limit - len(found))
                if len(found) < limit:
                    found += await self._lapsed_holders(slot, cutoff, limit - len(found))
        return found

    async def _lapsed_leases(self, slot: SlotKeys, cutoff: float, limit: int) -> list[Run]:
        """Runs leased on their own whose lease ran out (and whose owner has no live heartbeat)."""
        members = await self._redis.zrangebyscore(slot.leases, "-inf", cutoff, start=0, num=limit)
        run_ids = [member.decode() for member in cast(list[bytes], members)]
        async with self._redis.pipeline(transaction=False) as pipe:
            for run_id in run_ids:
                pipe.hmget(slot.run(run_id), _RUN_FIELDS)
                pipe.hget(slot.run(run_id), "owner")
            replies = await pipe.execute()
        owners = [_text(owner) if owner else "" for owner in replies[1::2]]
        alive = await self._alive_owners(slot, set(owners) - {""}, cutoff)
        adopted = [(run_id, owner) for run_id, owner in zip(run_ids, owners, strict=True) if owner in alive]
        if adopted:
            async with self._redis.pipeline(transaction=False) as pipe:
                for run_id, owner in adopted:
                    pipe.eval(_ADOPT, 3, slot.run(run_id), slot.leases, slot.held, run_id, owner)
                await pipe.execute()
        kept = [i for i, owner in enumerate(owners) if owner not in alive]
        return await self._sort_expired(slot, cutoff, [run_ids[i] for i in kept], [replies[2 * i] for i in kept])

    async def _sort_expired(
        self, slot: SlotKeys, cutoff: float, run_ids: list[str], replies: list[Fields]
    ) -> list[Run]:
        """The runs whose lease did run out; the index is repaired for all the others."""
        expired: list[Run] = []
        stale: list[str] = []
        renewed: dict[str, float] = {}
        for run_id, fields in zip(run_ids, replies, strict=True):
            run = _decode_run(run_id, fields)
            lease_until = _float(fields[-1])
            if run is None or run.state is not RunState.RUNNING or lease_until is None:
                stale.append(run_id)
            elif lease_until < cutoff:
                expired.append(run)
            else:
                renewed[run_id] = lease_until
        if stale or renewed:
            async with self._redis.pipeline(transaction=False) as pipe:
                if stale:
                    pipe.eval(_FORGET, 1, slot.leases, cutoff, *stale)
                if renewed:
                    pipe.zadd(slot.leases, renewed, xx=True)
                await pipe.execute()
        return expired

    async def _alive_owners(self, slot: SlotKeys, owners: set[str], cutoff: float) -> set[str]:
        if not owners:
            return set()
        ordered = sorted(owners)
        scores = await self._redis.zmscore(slot.gateways, ordered)
        return {owner for owner, score in zip(ordered, scores, strict=True) if score is not None and score >= cutoff}

    async def _lapsed_holders(self, slot: SlotKeys, cutoff: float, limit: int) -> list[Run]:
        """Runs held under heartbeats that ran out; owners with none left are dropped."""
        members = await self._redis.zrangebyscore(slot.gateways, "-inf", f"({cutoff}", start=0, num=LAPSED_OWNERS)
        found: list[Run] = []
        for owner in (_text(member) for member in cast(list[bytes], members)):
            if len(found) >= limit:
                break
            held = await self._redis.zrangebylex(slot.held, f"[{owner} ", f"({owner}!", start=0, num=limit - len(found))
            if not held:
                await self._redis.eval(_BURY, 2, slot.gateways, slot.held, owner, cutoff)
                continue
            run_ids = [_text(member).partition(" ")[2] for member in cast(list[bytes], held)]
            async with self._redis.pipeline(transaction=False) as pipe:
                for run_id in run_ids:
                    pipe.hmget(slot.run(run_id), (*_RUN_FIELDS, "owner"))
                replies = cast(list[Fields], await pipe.execute())
            stale = []
            for member, run_id, fields in zip(held, run_ids, replies, strict=True):
                run = _decode_run(run_id, fields[:-1])
                holder = fields[-1]
                if run is None or run.state is not RunState.RUNNING or holder is None or _text(holder) != owner:
                    stale.append(member)
                elif (_float(fields[-2]) or 0.0) < cutoff:  # not renewed on its own meanwhile
                    found.append(run)
            if stale:
                await self._redis.zrem(slot.held, *stale)
        return found

    async def cancel(self, run_id: str, retention: float) -> CancelResult:
        at = now()
        event = state_event(RunState.CANCELLED, 0, at)
        error = dump_error(RunError(ErrorCode.CANCELLED, "cancelled by a client before it started"))
        fields = {"state": RunState.CANCELLED.value, "finished_at": at, "error": error}
        keys = self._ending_keys(run_id)
        args = [*self._close_args(run_id, event, retention), *_pairs(fields)]
        with _STORE_ERRORS:
            result = CancelResult((await self._scripts.cancel(keys, args)).decode())
            if result is CancelResult.REQUESTED:
                await self._redis.publish(self.cancel_channel, run_id)
        return result

    def _ending_keys(self, run_id: str) -> tuple[str, ...]:
        """The keys of the scripts that end a queued run (cancel, expire)."""
        slot = self.keys_of(run_id)
        return (
            slot.run(run_id),
            slot.events(run_id),
            slot.deliveries,
            slot.expiry,
            slot.queue,
            slot.cancels,
            slot.ranked,
            slot.deadlines,
            slot.shares,
        )

    async def expire_queued(self, limit: int, retention: float) -> list[Run]:
        ended: list[Run] = []
        for _, slot in self._rotated("deadlines"):
            if len(ended) >= limit:
                break
            ended += await self._expire_queued(slot, limit - len(ended), retention)
        return ended

    async def _expire_queued(self, slot: SlotKeys, limit: int, retention: float) -> list[Run]:
        at = now()
        with _STORE_ERRORS:
            due = await self._redis.zrangebyscore(slot.deadlines, "-inf", at, start=0, num=limit)
            run_ids = [member.decode() for member in cast(list[bytes], due)]
            if not run_ids:
                return []
            error = dump_error(EXPIRED_OUTCOME.error)
            # EVAL, not EVALSHA: redis-py refuses EVALSHA in a Cluster pipeline (see _take).
            async with self._redis.pipeline(transaction=False) as pipe:
                for run_id in run_ids:
                    event = state_event(RunState.EXPIRED, 0, at, EXPIRED_OUTCOME)
                    fields = {"state": RunState.EXPIRED.value, "finished_at": at, "error": error}
                    args = [*self._close_args(run_id, event, retention), at, *_pairs(fields)]
                    pipe.eval(_EXPIRE, len(self._ending_keys(run_id)), *self._ending_keys(run_id), *args)
                    pipe.hmget(slot.run(run_id), _RUN_FIELDS)
                replies = await pipe.execute()
        pairs = zip(run_ids, replies[::2], replies[1::2], strict=True)
        return [run for run_id, ended, fields in pairs if ended and (run := _decode_run(run_id, fields)) is not None]

    async def queue_position(self, run: Run) -> QueuePosition | None:
        # Within the run's slot: its queue, and the pace of that queue's claims. Claims take from
        # every slot in turn, so the one slot's wait stands for the whole deployment's.
        index = slot_of(run.run_id, len(self.slot_keys))
        slot = self.slot_keys[index]
        with _STORE_ERRORS:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hmget(slot.run(run.run_id), "state", "entry")
                pipe.zrank(slot.ranked, run.run_id)
                pipe.zcard(slot.ranked)
                pipe.hget(slot.counters, "claimed")
                (state, entry), rank, ranked, claimed = await pipe.execute()
            if state != b"queued":
                return None
            if rank is not None:
                ahead = int(rank)
            else:
                before = (
                    0 if entry is None else await self._redis.eval(_ENTRIES_BEFORE, 1, slot.queue, entry, POSITION_SCAN)
                )
                ahead = int(ranked) + int(before)
        at = now()
        rate = self.claim_rates[index]
        rate.observe(int(claimed or 0), at)
        return QueuePosition(ahead, rate.wait(ahead, at))

    async def share_counts(self) -> dict[str, int]:
        found: dict[str, int] = {}
        with _STORE_ERRORS:
            for slot in self.slot_keys:
                counts = cast(dict[bytes, bytes], await self._redis.hgetall(slot.shares))
                for key, value in counts.items():
                    found[key.decode()] = found.get(key.decode(), 0) + int(value)
        return found

    async def cancellations(self) -> AsyncGenerator[str, None]:
        # A dedicated connection without a read timeout: a quiet channel is not a dead one.
        pubsub = self._blocking.pubsub(ignore_subscribe_messages=True)
        try:
            with _STORE_ERRORS:
                await self._subscribe(pubsub)
            while True:
                with _STORE_ERRORS:
                    message = await pubsub.get_message(timeout=SOCKET_TIMEOUT)
                if message is not None and message["type"] == "message":
                    yield message["data"].decode()
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _subscribe(self, pubsub: Any) -> None:
        try:
            await pubsub.subscribe(self.cancel_channel)
        except KeyError as exc:
            if not self._cluster:
                raise
            # redis-py 8.1's Cluster pub/sub looks the channel's slot up in its map of the
            # Cluster, which a failover leaves without it for a moment, and lets KeyError out
            # (get_node_from_slot turns only IndexError and TypeError into SlotNotCoveredError).
            # Seen at every master's failover in tests/e2e/test_cluster_slots.py.
            raise redis_errors.SlotNotCoveredError(f"no node known for the slot of {self.cancel_channel}") from exc

    async def events(self, run_id: str, after: str | None, wait: float) -> list[Event]:
        block = max(1, int(min(wait, MAX_CLAIM_WAIT) * 1000)) if wait > 0 else None
        # Only a read that waits holds a connection of its own; others share the bounded pool.
        client = self._blocking if block else self._redis
        with _STORE_ERRORS:
            positions = {self.events_key(run_id): after or "0-0"}
            reply = await self._read_streams(client, positions, group=False, count=None, block=block)
        streams = cast(list[tuple[bytes, list[Entry]]], reply or [])
        return [
            Event(entry_id.decode(), orjson.loads(fields[b"data"]))
            for _, entries in streams
            for entry_id, fields in entries
            if fields
        ]

    async def watch(self, positions: Mapping[str, str | None], wait: float) -> dict[str, list[Event]]:
        block = max(1, int(min(wait, MAX_CLAIM_WAIT) * 1000)) if wait > 0 else None
        if len(self._watched) > 2 * len(positions) + 64:
            # Bounded by the runs followed now, not by all those ever followed; renewed rather than
            # emptied, since a read still finishing (cancelled, or another slot's) uses the old.
            self._watched, self._watched_runs = {}, {}
        count = len(self.slot_keys)
        if count == 1 or not self._cluster:
            # One XREAD over every log and one wake stream: a single server takes keys of any slot.
            return await self._watch_slot(0, positions, block)
        groups: dict[int, dict[str, str | None]] = {}
        for run_id, after in positions.items():
            groups.setdefault(slot_of(run_id, count), {})[run_id] = after
        if len(groups) <= 1:
            index, group = next(iter(groups.items()), (0, {}))
            return await self._watch_slot(index, group, block)
        # A Cluster's XREAD names one slot's keys: one per slot, at once; the first to answer ends
        # the others through their wake streams, so that no read is cut off with its reply unread.
        reads = {index: asyncio.ensure_future(self._watch_slot(index, group, block)) for index, group in groups.items()}
        try:
            await asyncio.wait(reads.values(), return_when=asyncio.FIRST_COMPLETED)
            waiting = [index for index, read in reads.items() if not read.done()]
            if waiting:
                await self._wake([self.wake_keys[index] for index in waiting])
            found: dict[str, list[Event]] = {}
            for read in reads.values():
                found |= await read
            return found
        finally:
            for read in reads.values():
                read.cancel()

    async def _watch_slot(
        self, wake: int, positions: Mapping[str, str | None], block: int | None
    ) -> dict[str, list[Event]]:
        # One XREAD over the logs and this process's wake stream of slot ``wake``, whose id is the
        # last one seen: a wake added before the read began ends it too.
        keys, names = self._watched, self._watched_runs  # this read's, should watch() renew them meanwhile
        streams: dict[bytes | str | memoryview, int | bytes | str | memoryview] = {}
        for run_id, after in positions.items():
            log = keys.get(run_id)
            if log is None:
                log = keys[run_id] = self.events_key(run_id)
                names[log] = run_id
            streams[log] = after or "0-0"
        wake_key = self.wake_keys[wake]
        streams[wake_key] = self._woken[wake]
        with _STORE_ERRORS:
            reply = await self._read_streams(self._blocking, streams, group=False, count=None, block=block)
        found: dict[str, list[Event]] = {}
        for key, entries in cast(list[tuple[bytes, list[Entry]]], reply or []):
            name = key.decode()
            if name == wake_key:
                self._woken[wake] = entries[-1][0].decode()
                continue
            events = [Event(entry_id.decode(), orjson.loads(fields[b"data"])) for entry_id, fields in entries if fields]
            if events:
                found[names[name]] = events
        return found

    async def interrupt_watch(self) -> None:
        # On a Cluster with several slots, watch() waits on the wake stream of each slot it reads.
        spread = len(self.slot_keys) > 1 and self._cluster
        await self._wake(list(self.wake_keys) if spread else [self.wake_key])

    async def _wake(self, keys: list[str]) -> None:
        with _STORE_ERRORS:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.xadd(key, {"w": "1"}, maxlen=1, approximate=False)
                    pipe.expire(key, WAKE_TTL)
                await pipe.execute()

    async def list_runs(
        self, caller: str | None, state: RunState | None, limit: int, cursor: str | None
    ) -> tuple[list[Run], str | None]:
        top = f"({cursor}" if cursor else "+inf"
        with _STORE_ERRORS:
            if len(self.slot_keys) == 1:
                found, stop = await self._list_slot(self.slot_keys[0], caller or "", state, limit, top)
                return [run for _, run in found], stop
            pages = [await self._list_slot(slot, caller or "", state, limit, top) for slot in self.slot_keys]
        # Merged newest first. Each slot looked at every entry above where it stopped, so the runs
        # above the highest of those stops are all there are above it; the rest wait for the next page.
        stops = [float(stop) for _, stop in pages if stop is not None]
        bound = max(stops) if stops else None
        merged = sorted(
            (item for found, _ in pages for item in found if bound is None or item[0] >= bound),
            key=lambda item: item[0],
            reverse=True,
        )
        if len(merged) >= limit:
            return [run for _, run in merged[:limit]], repr(merged[limit - 1][0])
        return [run for _, run in merged], None if bound is None else repr(bound)

    async def _list_slot(
        self, slot: SlotKeys, caller: str, state: RunState | None, limit: int, top: str
    ) -> tuple[list[tuple[float, Run]], str | None]:
        """Up to ``limit`` runs of the slot below ``top``, newest first, with their scores; and the
        score below which the next page starts (None: no entry is left)."""
        index = slot.caller_index(caller)
        found: list[tuple[float, Run]] = []
        examined = 0
        while len(found) < limit and examined < LIST_SCAN_BUDGET:
            batch = min(LIST_SCAN_BUDGET - examined, max(limit * 2, 20))
            reply = await self._redis.zrevrangebyscore(index, top, "-inf", start=0, num=batch, withscores=True)
            members = cast(list[tuple[bytes, float]], reply)
            if not members:
                return found, None
            examined += len(members)
            runs = await self._runs([member.decode() for member, _ in members])
            gone = [member for (member, _), run in zip(members, runs, strict=True) if run is None]
            if gone:
                await self._redis.zrem(index, *gone)
            for (_, score), run in zip(members, runs, strict=True):
                top = f"({score!r}"
                if run is not None and (state is None or run.state is state):
                    found.append((score, run))
                    if len(found) == limit:
                        return found, repr(score)
            if len(members) < batch:
                return found, None
        return found, top[1:]

    async def _runs(self, run_ids: list[str]) -> list[Run | None]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for run_id in run_ids:
                pipe.hmget(self.run_key(run_id), _RUN_FIELDS)
            replies = await pipe.execute()
        return [_decode_run(run_id, fields) for run_id, fields in zip(run_ids, replies, strict=True)]

    async def due_deliveries(self, limit: int, lease: float) -> list[DueDelivery]:
        due: list[DueDelivery] = []
        for _, slot in self._rotated("deliveries"):
            if len(due) >= limit:
                break
            due += await self._due_deliveries(slot, limit - len(due), lease)
        return due

    async def _due_deliveries(self, slot: SlotKeys, limit: int, lease: float) -> list[DueDelivery]:
        at = now()
        with _STORE_ERRORS:
            members = await self._redis.zrangebyscore(slot.deliveries, "-inf", at, start=0, num=limit)
            run_ids = [member.decode() for member in cast(list[bytes], members)]
            # Each taken with all its attempt needs, the calls sent together (batching.py): one
            # round trip for the batch, not one per delivery (bench S6: a wave of completions).
            replies = await asyncio.gather(
                *(
                    self._take_delivery(
                        (slot.run(run_id), slot.deliveries, slot.hooks(run_id)), (at, at + lease, run_id)
                    )
                    for run_id in run_ids
                )
            )
        due = []
        run_fields, result_end = len(_RUN_FIELDS), len(_RUN_FIELDS) + len(_RESULT_FIELDS)
        for run_id, reply in zip(run_ids, replies, strict=True):
            if not reply:
                continue  # not due after all, or its delivery is over
            token, fields = int(reply[0]), reply[1:]
            run = _decode_run(run_id, fields[:run_fields])
            if run is not None:
                run = dataclasses.replace(run, request=self.sealer.join_webhook(run.request, fields[result_end]))
                due.append(DueDelivery(run, token, _decode_result(fields[run_fields:result_end]), prefetched=True))
        return due

    async def record_delivery(self, run_id: str, token: int, delivery: Delivery, retention: float) -> bool:
        final = delivery.state.is_final
        args: list[Any] = [
            token,
            dump_delivery(delivery),
            "1" if final else "0",
            delivery.next_attempt_at or 0,
            run_id,
            max(1, int(retention * 1000)),
            orjson.dumps(delivery_event(delivery, now())),
            now(),
        ]
        slot = self.keys_of(run_id)
        keys = (slot.run(run_id), slot.events(run_id), slot.deliveries, slot.expiry)
        with _STORE_ERRORS:
            return bool(await self._record_delivery(keys, args))

    async def redeliver(self, run_id: str, webhook_url: str | None = None) -> bool:
        at = now()
        sealed = self.sealer.seal_url(webhook_url) if webhook_url is not None else b""
        args: list[Any] = [at, dump_delivery(pending_delivery(at)), run_id, UNFINISHED_TTL, sealed]
        with _STORE_ERRORS:
            slot = self.keys_of(run_id)
            keys = [slot.run(run_id), slot.events(run_id), slot.deliveries, slot.expiry]
            answer = await self._scripts.redeliver(keys, args)
        if answer == 2:
            raise WebhookUrlDeleted()
        return bool(answer)

    async def queued_count(self) -> int:
        # Cancelling a queued run deletes its entry; entries of runs expired unclaimed
        # (UNFINISHED_TTL) stay until read or trimmed: an overcount that errs on the side of refusing work.
        with _STORE_ERRORS:
            async with self._redis.pipeline(transaction=False) as pipe:
                for slot in self.slot_keys:
                    pipe.xlen(slot.queue)
                    pipe.zcard(slot.ranked)
                return sum(int(count) for count in await pipe.execute())

    async def durability(self) -> dict[str, Any]:
        with _STORE_ERRORS:
            try:
                settings = await self._redis.config_get("appendonly")
                settings |= await self._redis.config_get("appendfsync")
                settings |= await self._redis.config_get("maxmemory-policy")
                settings |= await self._redis.config_get("save")
            except redis_errors.ResponseError:
                # Managed Redis services often disable CONFIG: say so rather than guess.
                unknown = "unknown (CONFIG GET is not allowed on this Redis)"
                return {"durability": unknown, "warnings": [], "sealing": self.sealer.sealing}
        config = {_text(k): _text(v or "") for k, v in cast(dict[Any, Any], settings).items()}
        warnings = []
        policy = config.get("maxmemory-policy", "noeviction")
        if policy != "noeviction":
            warnings.append(f"maxmemory-policy {policy} can evict run data; use noeviction")
        if config.get("appendonly") != "yes":
            snapshot = "periodic snapshots only" if config.get("save") else "nothing on disk"
            promise = f"appendonly no ({snapshot}): accepted runs are lost if Redis restarts"
            warnings.append("appendonly is off")
        elif config.get("appendfsync") == "always":
            promise = "appendfsync always: every accepted run is on disk before its 202"
        else:
            fsync = config.get("appendfsync", "everysec")
            promise = f"appendfsync {fsync}: up to one second of accepted runs can be lost if Redis itself crashes"
        if self.strict:
            promise += "; strict: each run reached a replica before its 202"
        if self.sealer.sealing == "plaintext":
            warnings.append("store.plaintext: credentials and webhook URLs are stored in the clear")
        return {"durability": promise, "warnings": warnings, "sealing": self.sealer.sealing}

    async def purge(self) -> None:
        await self._index_finished()
        # Rounds, so that a busy deployment's expiries do not outpace one batch per call.
        for slot in self.slot_keys:
            for _ in range(PURGE_ROUNDS):
                if await self._sweep_unfinished(slot) < PURGE_BATCH:
                    break
            for _ in range(PURGE_ROUNDS):
                if await self._purge_batch(slot) < PURGE_BATCH:
                    break

    async def _sweep_unfinished(self, slot: SlotKeys) -> int:
        """Schedule up to PURGE_BATCH runs created UNFINISHED_TTL ago and never closed (see _SWEEP);
        say how many the index held past the last sweep."""
        at = now()
        with _STORE_ERRORS:
            swept = await self._redis.hget(slot.counters, "swept")
            # Inclusive: runs created at the very score the last sweep reached are looked at again.
            found = await self._redis.zrangebyscore(
                slot.index, float(swept or "-inf"), at - UNFINISHED_TTL, start=0, num=PURGE_BATCH, withscores=True
            )
            pairs = cast(list[tuple[bytes, float]], found)
            if pairs:
                keys, reached = (slot.expiry, slot.counters), repr(pairs[-1][1])
                await self._redis.eval(_SWEEP, 2, *keys, at, slot.tag, reached, *(run_id for run_id, _ in pairs))
        return len(pairs)

    @staticmethod
    def _run_indexes(slot: SlotKeys) -> tuple[str, ...]:
        """The sorted sets whose members are run ids, besides the listing index."""
        return (slot.leases, slot.deliveries, slot.ranked, slot.deadlines, slot.hookruns)

    async def _purge_batch(self, slot: SlotKeys) -> int:
        """Delete up to PURGE_BATCH runs past their expiry; say how many entries were due."""
        at = now()
        keys = (slot.expiry, slot.index, slot.queue, slot.shares, slot.held, slot.cancels, *self._run_indexes(slot))
        with _STORE_ERRORS:
            due = await self._redis.zrangebyscore(slot.expiry, "-inf", at, start=0, num=PURGE_BATCH)
            members = cast(list[bytes], due)
            async with self._redis.pipeline(transaction=False) as pipe:
                # Cut in parts, so that no script holds Redis for long (about 10 us per run).
                for start in range(0, len(members), PURGE_SCRIPT_RUNS):
                    part = members[start : start + PURGE_SCRIPT_RUNS]
                    pipe.eval(_PURGE, len(keys), *keys, at, slot.tag, *part)
                # Entries of runs deleted by their TTL under an earlier version, never claimed.
                pipe.xtrim(slot.queue, minid=int(at * 1000) - _QUEUE_ENTRY_LIFETIME_MS, approximate=True)
                await pipe.execute()
        return len(members)
