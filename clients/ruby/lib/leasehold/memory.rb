# frozen_string_literal: true

require "monitor"

module Leasehold
  # An in-process backend with the lock, name and lease calls of {Client}, for
  # tests and single-process programs (Locksy::Memory): the same {Lock} and
  # {Name} objects work on it, renewal and loss included. It keeps leases with
  # TTLs (expired lazily on every call and when a waiter wakes), queues blocking
  # acquires FIFO, hands out strictly increasing tokens, and is thread-safe
  # (one Monitor). It guards nothing across processes. Not supported:
  # semaphores, history, lock-delay and the +stale+ read (accepted, no effect).
  class Memory
    include Recipes

    # Most recent expirations kept for {#expired}.
    EXPIRED_RING = 1024
    # Request ids remembered for retries.
    DEDUPE_WINDOW = 10_000

    # +logger+: for the {Lock}s made here (default {Leasehold.logger}).
    def initialize(logger: nil)
      @logger = logger
      @monitor = Monitor.new
      @changed = @monitor.new_cond
      @leases = {}     # id => {id:, ttl:, owner:, expires_at:, holds: [k], implicit:}
      @holds = {}      # [kind, key] => {owner:, token:, lease_id:, at_ms:, value:}
      @queues = Hash.new { |h, k| h[k] = [] } # [kind, key] => [{owner:, since:}]
      @ended = {}      # [kind, key] => how the last hold ended
      @stolen = {}     # [kind, key] => token force-released
      @index = Hash.new(0)
      @acquisitions = Hash.new(0)
      @expired = []
      @done = {}
      @revision = 0
      @last_token = 0
      @last_lease = 0
    end

    # The logger of the locks made here.
    def logger
      @logger || Leasehold.logger
    end

    # ----- leases -----

    # Create a lease of +ttl+ seconds. => +{lease_id:, ttl_ms:, owner:}+
    def grant(ttl:, owner: nil, request_id: nil)
      once(request_id) do
        check_ttl(ttl)
        lease = new_lease(ttl, owner.to_s, implicit: false)
        { lease_id: lease[:id], ttl_ms: Deadline.ms(ttl), owner: lease[:owner] }
      end
    end

    # Restart a lease's TTL. => +{lease_id:, ttl_ms:}+; {LeaseNotFoundError}.
    def keepalive(lease_id, timeout: nil) # rubocop:disable Lint/UnusedMethodArgument -- Client's signature
      synchronize do
        lease = live_lease(lease_id)
        lease[:expires_at] = now + lease[:ttl]
        { lease_id: lease[:id], ttl_ms: Deadline.ms(lease[:ttl]) }
      end
    end

    # End a lease and everything under it. => +{revoked: true, released: [keys]}+
    def revoke(lease_id, request_id: nil)
      once(request_id) do
        synchronize { { revoked: true, released: end_lease(live_lease(lease_id), :revoked) } }
      end
    end

    # A lease: +{lease_id:, ttl_ms:, owner:, remaining_ms:, locks:, names:, semaphores:}+.
    def lease(lease_id)
      synchronize do
        lease = live_lease(lease_id)
        { lease_id: lease[:id], ttl_ms: Deadline.ms(lease[:ttl]), owner: lease[:owner],
          remaining_ms: Deadline.ms(lease[:expires_at] - now),
          locks: keys_of(lease, :lock), names: keys_of(lease, :name), semaphores: [] }
      end
    end

    # ----- locks -----

    # Acquire +key+ (see {Client#acquire_lock}); +lock_delay+ is ignored here.
    def acquire_lock(key, owner:, ttl: nil, lease_id: nil, wait: nil, value: nil, lock_delay: nil, request_id: nil) # rubocop:disable Lint/UnusedMethodArgument
      once(request_id) { acquire_hold(:lock, key, owner, ttl, lease_id, wait, value) }
    end

    # Keep a held lock alive (see {Client#extend_lock}).
    def extend_lock(key, owner:, token:, ttl: nil, request_id: nil, timeout: nil, attempt: nil) # rubocop:disable Lint/UnusedMethodArgument
      once(request_id) { extend_hold(:lock, key, owner, token, ttl) }
    end

    # Release a held lock. => +{released: true}+
    def release_lock(key, owner:, token:, request_id: nil)
      once(request_id) { release_hold(:lock, key, owner, token) }
    end

    # End whoever holds +key+ (+kind+ :lock or :name). => +{released: true, owner:, token:}+
    def force_release(key, token: nil, kind: :lock, request_id: nil) # rubocop:disable Lint/UnusedMethodArgument
      once(request_id) do
        synchronize do
          k = [kind, key]
          reap
          hold = @holds[k]
          raise NotOwnerError, "#{kind} #{key.inspect} is not held" unless hold

          @stolen[k] = hold[:token]
          end_hold(k, :stolen)
          { released: true, owner: hold[:owner], token: hold[:token] }
        end
      end
    end

    # A lock's state (see {Client#lock_info}); with +index+ and +wait+ it blocks
    # until the key changes or +wait+ seconds pass.
    def lock_info(key, index: nil, wait: nil, stale: false) # rubocop:disable Lint/UnusedMethodArgument
      synchronize do
        k = [:lock, key]
        index && wait ? wait_until(now + wait) { @index[k] > index } : reap
        state = { key: key, held: !@holds[k].nil? }
        state.merge!(record(k)) if @holds[k]
        state.merge(waiters: @queues[k].size, queue: queue_of(k), index: @index[k])
      end
    end

    # Held locks in key order: +{locks: [...]}+.
    def locks(prefix: nil, limit: nil, after: nil)
      { locks: list(:lock, prefix, limit, after) }
    end

    # Wait up to +timeout+ seconds for +key+ to be free (see {Client#wait_for_release}).
    def wait_for_release(key, timeout:, token: nil)
      synchronize do
        k = [:lock, key]
        free = wait_until(now + timeout) { @holds[k].nil? || (token && @holds[k][:token] != token) }
        free ? { released: true, **@ended.fetch(k, {}) } : { released: false, holder: record(k) }
      end
    end

    # The most recent expirations, newest first (see {Client#expired}).
    def expired(limit: nil)
      synchronize do
        reap
        limit ? @expired.first(limit) : @expired.dup
      end
    end

    # ----- names -----

    # Register +name+ (see {Client#register_name}).
    def register_name(name, owner:, value: nil, ttl: nil, lease_id: nil, wait: nil, request_id: nil)
      once(request_id) { acquire_hold(:name, name, owner, ttl, lease_id, wait, value) }
    end

    # Keep a registered name alive.
    def extend_name(name, owner:, token:, request_id: nil, timeout: nil, attempt: nil) # rubocop:disable Lint/UnusedMethodArgument
      once(request_id) { extend_hold(:name, name, owner, token, nil) }
    end

    # Publish a new value under a held name. => the record.
    def proclaim(name, value, owner:, token:, request_id: nil)
      once(request_id) do
        synchronize do
          k = [:name, name]
          hold = owned_hold(k, owner, token)
          hold[:value] = value
          touch(k)
          record(k)
        end
      end
    end

    # Unregister a held name. => +{released: true}+
    def resign(name, owner:, token:, request_id: nil)
      once(request_id) { release_hold(:name, name, owner, token) }
    end

    # Who holds +name+: its record or nil.
    def whereis(name, stale: false) # rubocop:disable Lint/UnusedMethodArgument
      synchronize do
        reap
        k = [:name, name]
        @holds[k] && record(k).merge(registered: true)
      end
    end

    # Block until +name+ changes past +index+ or +timeout+ seconds pass; its state.
    def observe(name, index: 0, timeout: 30)
      synchronize do
        k = [:name, name]
        wait_until(now + timeout) { @index[k] > index }
        state = { name: name, registered: !@holds[k].nil? }
        state.merge!(record(k)) if @holds[k]
        state[:vacated] = @ended[k] if @ended[k]
        state.merge(queue: queue_of(k), index: @index[k])
      end
    end

    # Registered names in order: +{names: [...]}+.
    def names(prefix: nil, limit: nil, after: nil)
      { names: list(:name, prefix, limit, after) }
    end

    # Semaphores are not kept in memory.
    def acquire_semaphore(*)
      raise NotImplementedError, "Leasehold::Memory has no semaphores; use a Client"
    end

    private

    def synchronize(&block)
      @monitor.synchronize(&block)
    end

    def now
      Deadline.now
    end

    def wall_ms
      (Time.now.to_f * 1000).to_i
    end

    # Run a mutation once per request id: a retry gets the first result.
    def once(request_id)
      return yield unless request_id

      synchronize do
        return @done[request_id] if @done.key?(request_id)

        result = yield
        @done.shift if @done.size >= DEDUPE_WINDOW
        @done[request_id] = result
      end
    end

    def acquire_hold(kind, key, owner, ttl, lease_id, wait, value)
      synchronize do
        check_key(kind == :name ? "name" : "key", key)
        check_owner(owner)
        check_ttl(ttl) unless lease_id
        k = [kind, key]
        reap
        live_lease(lease_id) if lease_id
        if !@holds[k] && @queues[k].empty?
          grant_hold(k, owner, ttl, lease_id, value)
        elsif wait&.positive?
          queue_for(k, owner, wait, lease_id)
          grant_hold(k, owner, ttl, lease_id, value)
        else
          raise taken(k)
        end
      end
    end

    # Wait in +k+'s FIFO queue until first and free (or raise when +wait+ runs out).
    def queue_for(k, owner, wait, lease_id)
      ticket = { owner: owner, since: now }
      @queues[k] << ticket
      begin
        granted = wait_until(now + wait) { !@holds[k] && @queues[k].first.equal?(ticket) }
        raise taken(k) unless granted

        live_lease(lease_id) if lease_id
      ensure
        @queues[k].delete(ticket)
        @changed.broadcast
      end
    end

    def grant_hold(k, owner, ttl, lease_id, value)
      lease = lease_id ? @leases.fetch(lease_id) : new_lease(ttl, owner, implicit: true)
      @acquisitions[k] += 1
      @holds[k] = { owner: owner, token: (@last_token += 1), lease_id: lease[:id], at_ms: wall_ms, value: value }
      lease[:holds] << k
      @stolen.delete(k)
      touch(k)
      record(k)
    end

    def extend_hold(kind, key, owner, token, ttl)
      synchronize do
        check_ttl(ttl) if ttl
        k = [kind, key]
        lease = @leases.fetch(owned_hold(k, owner, token)[:lease_id])
        lease[:ttl] = ttl if ttl
        lease[:expires_at] = now + lease[:ttl]
        { token: token, ttl_ms: Deadline.ms(lease[:ttl]) }
      end
    end

    def release_hold(kind, key, owner, token)
      synchronize do
        k = [kind, key]
        owned_hold(k, owner, token)
        end_hold(k, :released)
        { released: true }
      end
    end

    # The hold of +k+ if +owner+ and +token+ hold it, else NotOwnerError.
    def owned_hold(k, owner, token)
      reap
      hold = @holds[k]
      return hold if hold && hold[:owner] == owner && hold[:token] == token

      what = "#{k[0]} #{k[1].inspect} is not held by this owner and token"
      if @stolen[k] == token
        raise NotOwnerError.new("#{what}: it was released by an operator (force release)", details: { reason: "stolen" })
      end

      raise NotOwnerError, "#{what} (it was released, expired or taken over)"
    end

    def new_lease(ttl, owner, implicit:)
      id = (@last_lease += 1)
      @leases[id] = { id: id, ttl: ttl, owner: owner, expires_at: now + ttl, holds: [], implicit: implicit }
    end

    def live_lease(lease_id)
      reap
      @leases.fetch(Integer(lease_id)) do
        raise LeaseNotFoundError, "lease #{lease_id} not found: it expired, was revoked or never existed"
      end
    end

    # End every lease whose TTL ran out.
    def reap
      t = now
      @leases.values.select { |l| l[:expires_at] <= t }.each { |l| end_lease(l, :expired) }
    end

    # End +lease+ and its holds; the keys released (names as "name:...").
    def end_lease(lease, reason)
      @leases.delete(lease[:id])
      lease[:holds].dup.map do |k|
        end_hold(k, reason)
        k[0] == :name ? "name:#{k[1]}" : k[1]
      end
    end

    def end_hold(k, reason)
      hold = @holds.delete(k)
      lease = @leases[hold[:lease_id]]
      if lease
        lease[:holds].delete(k)
        @leases.delete(lease[:id]) if lease[:implicit] && lease[:holds].empty?
      end
      @ended[k] = { reason: reason.to_s, owner: hold[:owner], token: hold[:token], at_ms: wall_ms }
      if reason == :expired
        @expired.unshift(kind: k[0].to_s, key: k[1], owner: hold[:owner], token: hold[:token], expired_at_ms: wall_ms)
        @expired.pop if @expired.size > EXPIRED_RING
      end
      touch(k)
    end

    def touch(k)
      @index[k] = (@revision += 1)
      @changed.broadcast
    end

    # Wait (releasing the monitor) until the block is true or +give_up_at+; whether it was.
    def wait_until(give_up_at)
      loop do
        reap
        return true if yield

        remaining = give_up_at - now
        return false if remaining <= 0

        next_expiry = @leases.values.map { |l| l[:expires_at] }.min
        @changed.wait([remaining, next_expiry && [next_expiry - now, 0.001].max].compact.min)
      end
    end

    # The record of +k+'s hold, in the server's shape.
    def record(k)
      hold = @holds[k]
      lease = @leases[hold[:lease_id]]
      common = { owner: hold[:owner], token: hold[:token], lease_id: hold[:lease_id], value: hold[:value],
                 expires_in_ms: lease ? [Deadline.ms(lease[:expires_at] - now), 0].max : 0 }
      if k[0] == :name
        { name: k[1], registered_at_ms: hold[:at_ms], **common }
      else
        { key: k[1], ttl_ms: lease ? Deadline.ms(lease[:ttl]) : 0, locked_at_ms: hold[:at_ms],
          acquisitions: @acquisitions[k], **common }
      end
    end

    def queue_of(k)
      @queues[k].each_with_index.map do |t, i|
        { owner: t[:owner], position: i + 1, waited_ms: Deadline.ms(now - t[:since]) }
      end
    end

    def keys_of(lease, kind)
      lease[:holds].select { |k| k[0] == kind }.map { |k| k[1] }
    end

    def list(kind, prefix, limit, after)
      synchronize do
        reap
        keys = @holds.keys.select { |k| k[0] == kind }.map(&:last).sort
        keys = keys.select { |key| key.start_with?(prefix) } if prefix
        keys = keys.select { |key| key > after } if after
        keys.first(limit || 100).map { |key| record([kind, key]) }
      end
    end

    def taken(k)
      hold = @holds[k]
      holder = hold && { owner: hold[:owner], token: hold[:token], expires_in_ms: record(k)[:expires_in_ms] }
      what = k[0] == :name ? "name" : "lock"
      message = "#{what} #{k[1].inspect} is #{hold ? "held by #{hold[:owner].inspect} (token #{hold[:token]})" : 'queued for'}; " \
                "pass wait_ms to queue for it"
      (k[0] == :name ? NameTakenError : LockHeldError).new(message, details: { holder: holder }.compact)
    end

    def check_key(field, key)
      key = key.to_s
      raise InvalidArgumentError, "#{field}: must not be empty" if key.empty?

      control = key[/[[:cntrl:]]/]
      return unless control

      raise InvalidArgumentError, format("%s: must not contain control characters (found U+%04X)", field, control.ord)
    end

    def check_owner(owner)
      raise InvalidArgumentError, "owner: must not be empty" if owner.to_s.empty?
    end

    def check_ttl(ttl)
      raise InvalidArgumentError, "ttl_ms: required: give ttl_ms (a new lease) or lease_id (an existing lease)" if ttl.nil?
      raise InvalidArgumentError, "ttl_ms: must be above 0, got #{Deadline.ms(ttl)}" unless Deadline.ms(ttl).positive?
    end
  end
end
