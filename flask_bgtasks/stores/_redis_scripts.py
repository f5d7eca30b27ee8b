"""The Lua scripts of the Redis store: each step of a task that must decide
against what other processes did (start, change, end, cancel, take over)
is one script, so it is atomic and costs one round trip.

The keys, under the store's prefix ``P``:

- ``Pt:<id>``, a hash: the task's fields (see :mod:`._fields`); a missing
  value is the empty string. A finished task's hash expires after
  ``BGTASKS_RESULT_TTL``.
- ``Pindex``, a sorted set of every task's id by submit time: listing.
- ``Pfinished``, a sorted set of the finished tasks by finish time:
  ``BGTASKS_MAX_RESULTS`` and the TTL.
- ``Pleases``, a sorted set of the unfinished tasks that a process holds,
  by the time its lease ends. A lease that ended means a dead process.

Every script gets the keys it touches by name, except the hashes of the old
tasks it evicts; the store is meant for one Redis, not a cluster.
"""

from __future__ import annotations

import typing as t

from .._redis import unavailable_as

if t.TYPE_CHECKING:
    from redis import Redis

# Closes a task's record that this script finished: out of the leases, into
# the finished set, expiring after the TTL, and the oldest finished records
# over BGTASKS_MAX_RESULTS deleted. KEYS: hash, index, finished, leases.
_CLOSE = """
local function close(id, finished_at, ttl_ms, max_results, prefix)
  redis.call('ZREM', KEYS[4], id)
  redis.call('ZADD', KEYS[3], finished_at, id)
  if tonumber(ttl_ms) > 0 then redis.call('PEXPIRE', KEYS[1], ttl_ms) end
  local over = redis.call('ZCARD', KEYS[3]) - tonumber(max_results)
  if over > 0 then
    local oldest = redis.call('ZRANGE', KEYS[3], 0, over - 1)
    for _, old in ipairs(oldest) do
      redis.call('DEL', prefix .. 't:' .. old)
      redis.call('ZREM', KEYS[2], old)
    end
    redis.call('ZREMRANGEBYRANK', KEYS[3], 0, over - 1)
  end
end
"""

#: An attempt starts, unless the task ended elsewhere (cancelled) or another
#: process holds it. KEYS: hash, leases. ARGV: id, owner, attempt,
#: started_at, lease_until. Returns 1 if it may run.
START = """
local f = redis.call('HMGET', KEYS[1], 'status', 'owner', 'finished_at', 'started_at')
if not f[1] or f[3] ~= '' then return 0 end
if f[2] ~= '' and f[2] ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'status', 'running', 'attempt', ARGV[3], 'owner', ARGV[2])
if f[4] == '' then redis.call('HSET', KEYS[1], 'started_at', ARGV[4]) end
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[1])
return 1
"""

#: Progress, errors, the cancel flag or a retry wait changed, while this
#: process holds the unfinished task. KEYS: hash. ARGV: owner, status,
#: progress, errors, cancel_requested.
CHANGE = """
local f = redis.call('HMGET', KEYS[1], 'owner', 'finished_at')
if f[1] ~= ARGV[1] or f[2] ~= '' then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'progress', ARGV[3], 'errors', ARGV[4])
if ARGV[5] == '1' then redis.call('HSET', KEYS[1], 'cancel_requested', '1') end
return 1
"""

#: A task's end, written if this process holds it and it has not ended
#: elsewhere. KEYS: hash, index, finished, leases. ARGV: id, owner, status,
#: outcome, progress, errors, cancel_requested, attempt, started_at,
#: finished_at, ttl_ms, max_results, prefix. Returns 1 if written.
FINISH = (
    _CLOSE
    + """
local f = redis.call('HMGET', KEYS[1], 'owner', 'finished_at', 'started_at')
if f[1] ~= ARGV[2] or f[2] ~= '' then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'outcome', ARGV[4], 'progress', ARGV[5],
  'errors', ARGV[6], 'attempt', ARGV[8], 'finished_at', ARGV[10])
if ARGV[7] == '1' then redis.call('HSET', KEYS[1], 'cancel_requested', '1') end
if f[3] == '' then redis.call('HSET', KEYS[1], 'started_at', ARGV[9]) end
close(ARGV[1], ARGV[10], ARGV[11], ARGV[12], ARGV[13])
return 1
"""
)

#: Shutdown stopped a durable task: queued again, held by nobody, with a
#: lease that has ended, so the next process takes it over at once. Being
#: ended set its cancel flag, which is not a request to stop: cleared.
#: KEYS: hash, leases. ARGV: id, owner, progress, errors.
RELEASE = """
local f = redis.call('HMGET', KEYS[1], 'owner', 'finished_at')
if f[1] ~= ARGV[2] or f[2] ~= '' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'queued', 'owner', '', 'cancel_requested', '0',
  'progress', ARGV[3], 'errors', ARGV[4])
redis.call('ZADD', KEYS[2], 0, ARGV[1])
return 1
"""

#: Cancel by id, from any process: a queued task is cancelled at once, a
#: running one asked to stop. KEYS: hash, index, finished, leases. ARGV:
#: id, now, ttl_ms, max_results, prefix. Returns the status after it, or
#: '' for an unknown task.
CANCEL = (
    _CLOSE
    + """
local f = redis.call('HMGET', KEYS[1], 'status', 'finished_at')
if not f[1] then return '' end
if f[2] ~= '' then return f[1] end
redis.call('HSET', KEYS[1], 'cancel_requested', '1')
if f[1] ~= 'queued' then return f[1] end
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[2])
close(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
return 'cancelled'
"""
)

#: The tasks whose lease ended (their process died, or released them):
#: those someone asked to stop are cancelled, the others that are not
#: durable fail with ``TaskLost``, and the durable ones this process can run
#: are taken over: held by it, queued, with a new lease. KEYS: a key under
#: the prefix (the script sets it to each task's hash in turn), index,
#: finished, leases. ARGV: now, owner,
#: lease_until, batch, prefix, ttl_ms, max_results, then the names of the
#: durable tasks this process can run. Returns ``{taken ids, lost ids}``.
TAKE_OVER = (
    _CLOSE
    + """
local ids = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', ARGV[1], 'LIMIT', 0, ARGV[4])
local names = {}
for i = 8, #ARGV do names[ARGV[i]] = true end
local taken, lost = {}, {}
for _, id in ipairs(ids) do
  KEYS[1] = ARGV[5] .. 't:' .. id
  local f = redis.call('HMGET', KEYS[1], 'finished_at', 'durable', 'cancel_requested', 'name',
    'owner', 'attempt', 'errors')
  if not f[1] or f[1] ~= '' then
    redis.call('ZREM', KEYS[4], id)
  elseif f[3] == '1' then
    redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[1])
    close(id, ARGV[1], ARGV[6], ARGV[7], ARGV[5])
  elseif f[2] ~= '1' then
    local errors = cjson.decode(f[7])
    errors[#errors + 1] = {attempt = tonumber(f[6]), type = 'TaskLost', traceback = '',
      at = tonumber(ARGV[1]), message = 'The process ' .. f[5] .. ' stopped without'
      .. ' finishing it. It is not durable, so it does not run again.'}
    redis.call('HSET', KEYS[1], 'status', 'failed', 'finished_at', ARGV[1],
      'errors', cjson.encode(errors))
    close(id, ARGV[1], ARGV[6], ARGV[7], ARGV[5])
    lost[#lost + 1] = id
  elseif names[f[4]] then
    redis.call('HSET', KEYS[1], 'owner', ARGV[2], 'status', 'queued', 'progress', '')
    redis.call('ZADD', KEYS[4], ARGV[3], id)
    taken[#taken + 1] = id
  end
end
return {taken, lost}
"""
)

#: A task taken over goes on. ``'release'``: this process can't queue it,
#: so it is held by nobody, with an ended lease, for another process.
#: ``'engine'``, before it is queued in the engine: held by nobody (a worker
#: may start it at once), but its lease goes on, in case this process dies
#: before the message is queued. ``'queued'``, after: the engine's queue
#: holds it, so the lease goes, unless a worker has started it meanwhile.
#: KEYS: hash, leases. ARGV: id, owner, how, lease_until.
HAND_OVER = """
local f = redis.call('HMGET', KEYS[1], 'owner', 'finished_at', 'status')
if f[2] ~= '' then return 0 end
local unheld = f[1] == '' and f[3] == 'queued'
if ARGV[3] == 'queued' then
  if unheld then redis.call('ZREM', KEYS[2], ARGV[1]) end
elseif ARGV[3] == 'engine' and f[1] == ARGV[2] then
  redis.call('HSET', KEYS[1], 'owner', '')
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
elseif ARGV[3] == 'release' and (f[1] == ARGV[2] or unheld) then
  redis.call('HSET', KEYS[1], 'owner', '')
  redis.call('ZADD', KEYS[2], 0, ARGV[1])
end
return 1
"""

#: The process that held an unfinished task is gone: its lease ends now.
#: KEYS: hash, leases. ARGV: id, process.
ABANDON = """
local f = redis.call('HMGET', KEYS[1], 'owner', 'finished_at')
if f[1] ~= ARGV[2] or f[2] ~= '' then return 0 end
redis.call('ZADD', KEYS[2], 0, ARGV[1])
return 1
"""

#: Every task's pool and status, and how many finished after a time, in one
#: round trip. KEYS: index, finished. ARGV: prefix, since. Returns
#: ``{pool, status, pool, status, ...}, finished``.
COUNT = """
local pairs = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local f = redis.call('HMGET', ARGV[1] .. 't:' .. id, 'pool', 'status')
  if f[1] then
    pairs[#pairs + 1] = f[1]
    pairs[#pairs + 1] = f[2]
  end
end
return {pairs, redis.call('ZCOUNT', KEYS[2], '(' .. ARGV[2], '+inf')}
"""

#: Delete the records of the tasks that finished before a time. KEYS:
#: index, finished. ARGV: before, prefix. Returns how many.
PURGE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[1])
for _, id in ipairs(ids) do
  redis.call('DEL', ARGV[2] .. 't:' .. id)
  redis.call('ZREM', KEYS[1], id)
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[1])
return #ids
"""


class Scripts:
    """The scripts, loaded into one client, and the keys they share.

    :param redis: A client that answers with ``str``.
    :param url: Its URL, for errors (shown without the password).
    :param prefix: Put before every key.
    """

    def __init__(self, redis: Redis, url: str, prefix: str) -> None:
        self.redis = redis
        self.url = url
        self.prefix = prefix
        #: The sorted sets: every task, the finished ones, the leases.
        self.index = f"{prefix}index"
        self.finished = f"{prefix}finished"
        self.leases = f"{prefix}leases"
        self._scripts = {
            name: redis.register_script(source)
            for name, source in [
                ("start", START),
                ("change", CHANGE),
                ("finish", FINISH),
                ("release", RELEASE),
                ("cancel", CANCEL),
                ("take_over", TAKE_OVER),
                ("hand_over", HAND_OVER),
                ("purge", PURGE),
                ("abandon", ABANDON),
                ("count", COUNT),
            ]
        }

    def key(self, task_id: str) -> str:
        """The hash of a task."""
        return f"{self.prefix}t:{task_id}"

    def sets(self) -> list[str]:
        """The keys a script that closes a record needs after its hash."""
        return [self.index, self.finished, self.leases]

    def run(self, script: str, keys: list[str], args: list[t.Any], doing: str) -> t.Any:
        """Run a script; a lost connection raises
        :class:`~flask_bgtasks.StoreUnavailable`, saying what it was
        ``doing``."""
        with unavailable_as(self.url, doing):
            return self._scripts[script](keys, args)
