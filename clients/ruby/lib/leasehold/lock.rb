# frozen_string_literal: true

require "securerandom"
require "socket"

module Leasehold
  # A lock on one key, renewed in the background while held. Made by
  # {Recipes#lock} (+client.lock("key", ttl: 30, wait: 10)+) over a {Client} or
  # a {Memory}; one object can be acquired and released many times, each
  # acquisition with a new fencing {#token}.
  #
  #   lock = client.lock("jobs/sitemap", ttl: 30, wait: 10)
  #   lock.with_lock { |l| write_sitemap(fencing_token: l.token) }
  #
  # Durations are seconds (Integer or Float). While held, a thread renews the
  # hold every ttl / 3 ({Renewer}); the lock believes it holds until the client
  # deadline, t_send + ttl × 0.99 of the last successful renewal ({Deadline}).
  # When the hold is lost, +on_lost+ is called with a {LockLost}; without one, the
  # {LockLost} is raised in the thread running {#with_lock}'s block.
  #
  # {Semaphore} (a slot of a counting semaphore) and {Name} (a registered name,
  # leadership) are Locks on other resources, with the same interface.
  class Lock
    # The key (or semaphore key, or name) this object locks.
    attr_reader :key
    # The owner string sent with every request (unique per object by default).
    attr_reader :owner
    # The TTL in seconds of the hold's lease.
    attr_reader :ttl
    # Default seconds {#acquire} and {#with_lock} queue for the lock (0: try once).
    attr_reader :wait
    # The value stored with the hold (or nil).
    attr_reader :value

    # +backend+: a {Client} or a {Memory}. Options: +ttl+ (seconds, default 30),
    # +wait+ (seconds to queue in {#acquire}, default 0), +owner+, +value+ (a
    # string stored with the hold), +lease_id+ (hold under an existing lease; the
    # TTL is then at most the lease's), +lock_delay+ (seconds the key stays closed
    # if this hold expires), +heartbeat+ (renewal period, default ttl / 3, must be
    # below ttl / 2), +drift+ (default 0.01), +on_lost+ (called with a {LockLost}
    # from the renewal thread instead of raising it into {#with_lock}'s block),
    # +logger+ (default: the backend's).
    def initialize(backend, key, ttl: 30, wait: 0, owner: nil, value: nil, lease_id: nil,
                   lock_delay: nil, heartbeat: nil, drift: Deadline::DRIFT, on_lost: nil, logger: nil)
      @backend = backend
      @key = key
      @ttl = ttl
      @wait = wait
      @owner = owner || Lock.default_owner
      @value = value
      @lease_id = lease_id
      @lock_delay = lock_delay
      @heartbeat = heartbeat
      @drift = drift
      @on_lost = on_lost
      @logger = logger
      @mutex = Mutex.new
      @refresh_mutex = Mutex.new
      @hold = nil
      @renewer = nil
      @raise_into = nil
    end

    # "host-pid-n": unique per lock object within a process.
    def self.default_owner
      @counter_mutex ||= Mutex.new
      n = @counter_mutex.synchronize { @counter = (@counter || 0) + 1 }
      "#{Socket.gethostname}-#{Process.pid}-#{n}"
    end

    # Acquire, queueing FIFO for up to +wait+ seconds (0: try once), then renew in
    # the background. Returns true (also when already held). Raises
    # {LockNotOwnedError} (with the +holder+) when not obtained within the wait,
    # or the server's error (e.g. {InvalidArgumentError}).
    def acquire(wait: @wait)
      obtain(wait, new_request_id)
    end

    # Try once without waiting: true if acquired, false if someone else holds it.
    def try_lock
      acquire(wait: 0)
    rescue LockNotOwnedError, NameTakenError, SemaphoreFullError
      false
    end

    # Acquire (waiting up to +wait+ seconds), run the block with this lock while
    # renewing it, and release afterwards; returns the block's value. Raises
    # {LockNotOwnedError} if not obtained within the wait. If the hold is lost
    # before the block returns, {LockLost} is raised in the block's thread (unless
    # +on_lost+ was given), or instead of running the block if it was lost before
    # the block started; a lost hold is not released. A loss reported after the
    # block returned is not raised: its value is returned, {#lost} shows the loss.
    def with_lock(wait: @wait, &block)
      acquire(wait: wait)
      run_held(&block)
    end
    alias synchronize with_lock

    # Release now (stops renewing). Returns true if released, false if there was
    # nothing to release. Raises {LockLost} if the cluster says the hold had
    # already ended (NoBrainer's LostLock on unlock).
    #
    # Renewal stops before the request is sent. If the request fails on the way
    # (unavailable, timeout: the cluster may or may not have released), the error
    # is raised and {#release} can be called again; it sends the same request id,
    # so a retry of a release that did happen answers true. Meanwhile the hold is
    # not renewed and no longer believed ({#held?} false, {#state} :stopped).
    def release
      hold, renewer, request_id = @mutex.synchronize do
        return false unless @hold && !@released

        @released = true
        [@hold, @renewer, @release_request_id ||= new_request_id]
      end
      renewer.stop
      begin
        send_release(hold, request_id)
      rescue *Renewer::GONE => e
        raise lost_from(e, "not released: the hold had already ended on the cluster")
      rescue StandardError
        # Not known to be released: let a later call try again.
        @mutex.synchronize { @released = false if @hold.equal?(hold) }
        raise
      end
      true
    end

    # Extend the hold now; with +ttl+ (seconds) its lease gets that TTL from now
    # on (a replicated change) and renewal follows it. A shorter TTL shortens the
    # client deadline before the request is sent (the cluster may apply it at any
    # moment after), a longer one lengthens it only once the cluster answered.
    # Returns true. Raises {LockLost} if the hold is gone (or was never
    # acquired), or if the answer came too late: after the client deadline passed
    # or the loss was reported (a lapsed hold is not brought back).
    def refresh(ttl = nil)
      @refresh_mutex.synchronize do # one TTL change at a time
        hold, renewer = @mutex.synchronize { [@hold, @released ? nil : @renewer] }
        raise LockLost.new("#{label}: not held", reason: :expired) unless hold && renewer
        raise renewer.lost if renewer.lost

        sent = Deadline.now
        if ttl
          renewer.changing_ttl(sent, ttl)
          @ttl = [@ttl, ttl].min
        end
        send_extend(hold, ttl: ttl)
        unless renewer.renewed(sent, ttl: ttl)
          raise renewer.lost || LockLost.new("#{label}: refreshed too late: the hold was no longer believed " \
                                             "(its client deadline had passed, or it was released)",
                                             reason: :expired, details: { key: @key, token: token })
        end
        @ttl = ttl if ttl
        true
      end
    rescue *Renewer::GONE => e
      raise lost_from(e, "not refreshed: the hold had ended on the cluster")
    end

    # Stop renewing but keep the hold until its lease runs out (the DynamoDB lock
    # client's StopHeartbeat). Nothing is released, not even by {#with_lock}; the
    # loss is reported (reason :heartbeat_stopped) when the client deadline passes.
    # A later {#release} still releases.
    def stop_heartbeat
      @mutex.synchronize do
        @heartbeat_stopped = true
        @renewer&.stop_heartbeat
      end
    end

    # True while this object holds the lock: acquired, not released, not lost, and
    # the client deadline not passed.
    def held?
      renewer = @mutex.synchronize { @released ? nil : @renewer }
      renewer ? renewer.held? : false
    end
    alias locked? held?

    # The fencing token of the current (or last) hold; nil before the first acquire.
    # Pass it to downstream writes so they can refuse an older holder's.
    def token
      @hold && @hold[:token]
    end
    alias sequence token

    # The lease the current (or last) hold lives under.
    def lease_id
      @hold && @hold[:lease_id]
    end

    # :unlocked, :held, :jeopardy (renewals failing, deadline not passed), :lost or
    # :stopped (released).
    def state
      renewer = @renewer
      return :unlocked unless renewer

      state = renewer.state
      return state unless %i[held jeopardy].include?(state)

      renewer.held? ? state : :lost # the deadline passed; the thread reports it at once
    end

    # The client deadline, in seconds of the monotonic clock ({Deadline.now}), or nil.
    def valid_until
      @renewer&.valid_until
    end

    # The {LockLost} that ended the last hold, or nil.
    def lost
      @renewer&.lost
    end

    # The current holder of the key as the cluster sees it now (a request):
    # +{owner:, token:, locked_at_ms:, expires_in_ms:, ...}+, or nil when free.
    def holder
      state = @backend.lock_info(@key)
      state[:held] ? state : nil
    end

    # Owner of whoever holds the key now (a request), or nil (Locker's locked_by).
    def locked_by
      holder&.fetch(:owner)
    end

    # When the current hold was granted, as a Time (a request), or nil.
    def locked_at
      record = holder
      record && Time.at(record.fetch(held_since_field) / 1000.0)
    end

    # Until when the current hold lasts if not renewed, as a Time by the cluster
    # leader's count of its remaining TTL (a request), or nil.
    def locked_until
      record = holder
      record && Time.now + record.fetch(:expires_in_ms) / 1000.0
    end

    # A short description for logs and errors.
    def label
      "lock #{@key.inspect} (owner #{@owner.inspect}#{token && ", token #{token}"})"
    end

    # Human-readable form.
    def inspect
      "#<#{self.class.name} #{label} #{state}>"
    end

    protected

    # Acquire with +request_id+ (reused by the caller on a retry of the same
    # attempt), queueing up to +wait+ seconds; see {#acquire}.
    def obtain(wait, request_id)
      return true if held?

      ttl = effective_ttl
      heartbeat = Deadline.heartbeat(ttl, @heartbeat, @drift) if ttl.positive?
      t_send = Deadline.now
      hold = begin
        send_acquire(ttl, wait, request_id)
      rescue LockHeldError, NameTakenError, SemaphoreFullError => e
        raise not_obtained(e)
      end
      # The acquire did not start the lease's TTL afresh when the grant came after
      # a wait (the server kept the waiting lease alive meanwhile) or when the hold
      # joined an existing lease (whose TTL runs from its last renewal, maybe long
      # before this acquire). Both are safe on the server; this side's deadline
      # needs a fresh t_send: renew at once.
      t_send = reanchor(hold) if wait.positive? || @lease_id
      start(hold, t_send, ttl, heartbeat)
      true
    end

    # Run the block with this (held) lock, raising a loss into it, then release.
    #
    # A loss is raised into the block only (LockLost is masked elsewhere here).
    # One reported before the block started (the grant was lost at once) is
    # raised instead of running it. One that arrives after the block returned,
    # while this method still let losses be raised into its thread, is left
    # pending by the mask and surfaces as the mask ends: the block's work is done
    # then, so it is not raised; {#lost} and {#state} show it.
    def run_held
      completed = false
      result = nil
      begin
        Thread.handle_interrupt(LockLost => :never) do
          @mutex.synchronize { @raise_into = Thread.current }
          result = Thread.handle_interrupt(LockLost => :immediate) do
            # A loss reported before @raise_into was set had nowhere to go.
            raise_if_lost_before_block unless @on_lost
            yield self
          end
          completed = true
        ensure
          @mutex.synchronize { @raise_into = nil }
          release_after_block(completed)
        end
      rescue LockLost => e
        raise unless completed && e.equal?(lost) # another lock's loss goes on up

        logger.info("#{label}: lost after the block had returned; its result stands")
      end
      result
    end

    # Field of {#holder} with the grant time in ms since the epoch.
    def held_since_field
      :locked_at_ms
    end

    # Send the acquire with +request_id+; returns the grant (+:token+, +:lease_id+ at least).
    def send_acquire(ttl, wait, request_id)
      @backend.acquire_lock(@key, owner: @owner, value: @value, wait: wait, lock_delay: @lock_delay,
                                  request_id: request_id, **lease_choice(ttl))
    end

    # Renew +hold+ (and change its TTL when +ttl+ is given); +timeout+ bounds the
    # call, +attempt+ each try at one endpoint.
    def send_extend(hold, ttl: nil, timeout: nil, attempt: nil)
      @backend.extend_lock(@key, owner: @owner, token: hold[:token], ttl: ttl, timeout: timeout, attempt: attempt)
    end

    # Release +hold+ with +request_id+ (the same on a retry).
    def send_release(hold, request_id)
      @backend.release_lock(@key, owner: @owner, token: hold[:token], request_id: request_id)
    end

    # A fresh idempotency key for one acquire or release (reused on its retries).
    def new_request_id
      "rb-#{SecureRandom.uuid}"
    end

    # The error raised when the acquire was refused by a holder.
    def not_obtained(error)
      LockNotOwnedError.new(error.message, code: error.code, status: error.status, details: error.details)
    end

    # +{ttl:}+ for a new implicit lease, or +{lease_id:}+ for the existing one.
    def lease_choice(ttl)
      @lease_id ? { lease_id: @lease_id } : { ttl: ttl }
    end

    private

    # The TTL the client deadline uses: the lease's when holding under one.
    def effective_ttl
      return @ttl unless @lease_id

      [@ttl, @backend.lease(@lease_id).fetch(:ttl_ms) / 1000.0].min
    end

    # Renew right after a grant that did not start the lease's TTL afresh (after a
    # wait, or under an existing lease); the time that renewal was sent.
    def reanchor(hold)
      sent = Deadline.now
      send_extend(hold)
      sent
    rescue *Renewer::GONE => e
      raise lost_from(e, "lost right after the grant")
    rescue Error
      begin
        send_release(hold, new_request_id)
      rescue Error
        nil # best effort: the hold expires by its TTL otherwise
      end
      raise
    end

    def start(hold, t_send, ttl, heartbeat)
      @mutex.synchronize do
        @renewer&.stop # a previous hold's renewer must not report anything now
        @hold = hold
        @released = false
        @release_request_id = nil
        @heartbeat_stopped = false
        renewer = Renewer.new(
          t_send: t_send, ttl: ttl, heartbeat: heartbeat, drift: @drift, logger: logger, label: label,
          # The whole renewal ends by the deadline; each try at one endpoint
          # sooner, so that a hung node leaves time for the others.
          renew: ->(budget) { send_extend(hold, timeout: budget, attempt: renewer.attempt_timeout) },
          on_lost: ->(error) { signal_loss(renewer, error) }
        )
        @renewer = renewer # before it starts: it may report a loss at once
        renewer.start
      end
    end

    # Called from the renewal thread of +renewer+ when its hold is lost.
    def signal_loss(renewer, error)
      return unless @renewer.equal?(renewer)
      return @on_lost.call(error) if @on_lost

      # Under the mutex, so that with_lock's block cannot end in between.
      @mutex.synchronize { @raise_into&.raise(error) }
    end

    # Raise the loss of the hold if it ended before with_lock's block could start
    # (reported already, or its client deadline passed and the report is coming).
    def raise_if_lost_before_block
      error = lost
      raise error if error
      return if held?

      raise LockLost.new("#{label}: the client deadline passed before the block started",
                         reason: :expired, details: { key: @key, token: token })
    end

    def release_after_block(completed)
      return if lost || @mutex.synchronize { @heartbeat_stopped }

      release
    rescue LockLost
      nil # it ended on the cluster anyway
    rescue Error => e
      raise if completed

      logger.warn("#{label}: release after a failed block failed too: #{e.message}")
    end

    # This lock's logger, else the backend's, else the global one.
    def logger
      @logger || (@backend.respond_to?(:logger) ? @backend.logger : Leasehold.logger)
    end

    def lost_from(error, what)
      reason = error.is_a?(NotOwnerError) && error.reason == "stolen" ? :stolen : :expired
      LockLost.new("#{label}: #{what}: #{error.message}", reason: reason,
                                                          details: { key: @key, token: token, code: error.code })
    end
  end
end
