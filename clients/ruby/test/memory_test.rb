# frozen_string_literal: true

require_relative "test_helper"

# Leasehold::Memory: the in-process backend behind the same Lock and Name objects.
class MemoryTest < Minitest::Test
  include TestSupport

  def setup
    @memory = Leasehold::Memory.new
  end

  def test_grant_conflict_and_release
    a = @memory.lock("k", ttl: 5, owner: "A", value: "a's")
    assert a.acquire
    assert a.held?
    assert_equal "A", a.locked_by
    assert_in_delta Time.now, a.locked_at, 1
    assert_in_delta Time.now + 5, a.locked_until, 1
    b = @memory.lock("k", owner: "B")
    refute b.try_lock
    error = assert_raises(Leasehold::LockNotOwnedError) { b.acquire }
    assert_equal ["lock_held", "A", a.token], [error.code, error.holder[:owner], error.holder[:token]]
    assert a.release
    refute a.held?
    refute a.release, "nothing left to release"
    assert b.try_lock
    assert_operator b.token, :>, a.token
    assert_equal a.token, b.sequence - 1
  end

  def test_tokens_strictly_increase_across_keys_and_kinds
    tokens = %w[a b a c].map { |k| @memory.lock(k).tap(&:acquire).tap(&:release).token }
    tokens << @memory.register("n", "v").token
    assert_equal tokens.sort, tokens
    assert_equal tokens.uniq, tokens
  end

  def test_blocking_acquires_are_granted_fifo
    holder = @memory.lock("fifo", owner: "A")
    holder.acquire
    order = Queue.new
    threads = %w[B C D].map do |owner|
      t = Thread.new { @memory.lock("fifo", owner: owner, wait: 5).with_lock { order << owner } }
      wait_until("#{owner} queued") { @memory.lock_info("fifo")[:queue].map { |w| w[:owner] }.include?(owner) }
      t
    end
    holder.release
    threads.each(&:value)
    assert_equal %w[B C D], Array.new(3) { order.pop }
  end

  # Waiting longer than the TTL: the deadline counts from the keepalive sent at
  # the grant, not from the acquire sent before the wait.
  def test_a_grant_after_a_wait_is_reanchored
    holder = @memory.lock("long-wait", owner: "A")
    holder.acquire
    Thread.new do
      sleep 0.8
      holder.release
    end
    started = now
    waiter = @memory.lock("long-wait", ttl: 0.5, wait: 5)
    assert waiter.acquire
    assert_operator now - started, :>=, 0.7, "waited for the release"
    assert waiter.held?
    assert_operator waiter.valid_until, :>, now + 0.3
  end

  def test_a_wait_that_runs_out_raises_and_leaves_the_queue
    @memory.lock("busy", owner: "A").acquire
    started = now
    assert_raises(Leasehold::LockNotOwnedError) { @memory.lock("busy", wait: 0.2).acquire }
    assert_operator now - started, :>=, 0.2
    assert_equal 0, @memory.lock_info("busy")[:waiters]
  end

  def test_an_unrenewed_hold_expires_and_is_listed
    lock = @memory.lock("ttl", ttl: 0.3, owner: "gone")
    lock.acquire
    lock.stop_heartbeat
    wait_until("expired", timeout: 2) { !@memory.lock_info("ttl")[:held] }
    refute lock.held?
    assert_equal :heartbeat_stopped, wait_until("loss reported") { lock.lost }.reason
    entry = @memory.expired.first
    assert_equal ["lock", "ttl", "gone", lock.token], entry.values_at(:kind, :key, :owner, :token)
    assert_equal "expired", @memory.wait_for_release("ttl", timeout: 0)[:reason]
  end

  def test_a_waiter_gets_the_lock_when_the_holder_expires
    dead = @memory.lock("expiring", ttl: 0.3)
    dead.acquire
    dead.stop_heartbeat
    started = now
    waiter = @memory.lock("expiring", wait: 3)
    assert waiter.acquire
    assert_operator now - started, :>=, 0.25
    assert_operator waiter.token, :>, dead.token
  end

  def test_renewal_keeps_a_short_lock
    lock = @memory.lock("renewed", ttl: 0.5)
    lock.acquire
    sleep 1.6 # more than three TTLs
    assert lock.held?
    assert_equal lock.token, @memory.lock_info("renewed")[:token]
  end

  def test_mutual_exclusion_between_threads
    inside = 0
    overlaps = 0
    counter = 0
    threads = Array.new(8) do
      Thread.new do
        25.times do
          @memory.lock("mutex", wait: 5).with_lock do
            inside += 1
            overlaps += 1 if inside > 1
            counter += 1
            Thread.pass
            inside -= 1
          end
        end
      end
    end
    threads.each(&:value)
    assert_equal [0, 200], [overlaps, counter]
  end

  def test_revocation_raises_lock_lost_into_the_block
    lease_ids = Queue.new
    error = assert_raises(Leasehold::LockLost) do
      @memory.lock("revoked", ttl: 0.6).with_lock do |lock|
        lease_ids << lock.lease_id
        Thread.new { @memory.revoke(lock.lease_id) }
        sleep 5 # interrupted by LockLost at the next renewal
      end
    end
    assert_equal :expired, error.reason
    assert_raises(Leasehold::LeaseNotFoundError) { @memory.lease(lease_ids.pop) }
  end

  def test_revocation_is_passed_to_on_lost_instead
    losses = Queue.new
    lock = @memory.lock("revoked-cb", ttl: 0.6, on_lost: ->(e) { losses << e })
    result = lock.with_lock do
      @memory.revoke(lock.lease_id)
      losses.pop.reason
    end
    assert_equal :expired, result
    assert_raises(Leasehold::LockLost) { lock.refresh }
  end

  def test_refresh_changes_the_ttl_and_release_after_loss_raises
    lock = @memory.lock("refresh", ttl: 0.6)
    lock.acquire
    assert lock.refresh(5)
    assert_equal 5000, @memory.lock_info("refresh")[:ttl_ms]
    @memory.force_release("refresh")
    error = assert_raises(Leasehold::LockLost) { lock.release }
    assert_equal :stolen, error.reason
  end

  # Shrinking the TTL lowers the client deadline before the request goes out (the
  # backend may apply it at once) and sets it from the send time and the new TTL
  # after, never keeping the longer one; growing it counts only once answered.
  def test_refresh_with_a_shorter_ttl_shortens_the_client_deadline
    lock = @memory.lock("shrink", ttl: 5)
    lock.acquire
    seen = []
    @memory.define_singleton_method(:extend_lock) do |key, **options|
      seen << [options[:ttl], lock.valid_until - Leasehold::Deadline.now] if options[:ttl]
      super(key, **options)
    end
    before = now
    assert lock.refresh(0.6)
    after = now
    assert_equal 0.6, lock.ttl
    assert_operator seen.last[1], :<=, 0.594, "lowered before the request was sent"
    assert_operator lock.valid_until, :>=, Leasehold::Deadline.valid_until(before, 0.6)
    assert_operator lock.valid_until, :<=, Leasehold::Deadline.valid_until(after, 0.6)
    assert_equal 600, @memory.lock_info("shrink")[:ttl_ms]

    assert lock.refresh(5)
    assert_operator seen.last[1], :<=, 0.594, "not raised before the reply"
    assert_equal 5, lock.ttl
    assert_operator lock.valid_until - now, :>, 4.5
    assert lock.held?
    lock.release
  end

  # A refresh whose reply comes after the client deadline passed (the renewals
  # failed meanwhile and the loss was reported) raises LockLost: it does not
  # bring the lapsed hold back.
  def test_a_refresh_answered_after_the_deadline_raises_lock_lost
    main = Thread.current
    @memory.define_singleton_method(:extend_lock) do |key, **options|
      raise Leasehold::UnavailableError, "no quorum" unless Thread.current == main # the renewals fail

      super(key, **options).tap { sleep 0.4 } # applied at once, answered late
    end
    lock = @memory.lock("late-refresh", ttl: 0.6)
    lock.acquire
    sleep 0.3
    error = assert_raises(Leasehold::LockLost) { lock.refresh }
    assert_equal :unreachable, error.reason
    refute lock.held?
    assert_equal :lost, lock.state
  end

  # A loss reported between the grant and the start of with_lock's block (no
  # thread to raise it into yet) is raised instead of running the block.
  def test_a_loss_before_the_block_starts_is_raised_instead_of_running_it
    lock = @memory.lock("lost-early", ttl: 0.6)
    memory = @memory
    lock.define_singleton_method(:acquire) do |**options|
      super(**options).tap do
        memory.force_release("lost-early")
        sleep 0.01 until lost # the renewal thread reports it (:stolen) before the block
      end
    end
    ran = false
    error = assert_raises(Leasehold::LockLost) { lock.with_lock { ran = true } }
    refute ran, "the block must not run without the lock"
    assert_equal :stolen, error.reason
    assert_same lock.lost, error
  end

  # A loss reported after the block returned but before with_lock stopped
  # raising into its thread is not raised: the block's work is done, so with_lock
  # returns its value; the loss shows in lost and state, nothing is released.
  def test_a_loss_after_the_block_returned_is_not_raised
    lock = @memory.lock("lost-late", ttl: 0.6)
    mutex = lock.instance_variable_get(:@mutex)
    main = Thread.current
    locked = Queue.new
    go = Queue.new
    holder = nil
    result = lock.with_lock do
      # Hold the lock object's mutex so that the loss waits for it, then let
      # with_lock's block end; release the mutex once with_lock waits for it too.
      holder = Thread.new do
        mutex.synchronize do
          locked << true
          go.pop
          sleep 0.01 until main.status == "sleep"
        end
      end
      locked.pop
      @memory.force_release("lost-late")
      renewal = lock.instance_variable_get(:@renewer).instance_variable_get(:@thread)
      sleep 0.01 until lock.lost && renewal.status == "sleep" # waiting for the mutex to raise it in
      go << true
      :done
    end
    holder.join
    assert_equal :done, result
    assert_equal :stolen, lock.lost.reason
    assert_equal :lost, lock.state
  end

  # A release that failed on the way (no quorum, no answer) can be retried: with
  # the same request id, so a retry of one that did act gets its result back.
  def test_a_release_that_failed_can_be_retried
    lock = @memory.lock("release-retry", ttl: 5)
    lock.acquire
    ids = []
    @memory.define_singleton_method(:release_lock) do |key, **options|
      ids << options[:request_id]
      case ids.size
      when 1 then raise Leasehold::UnavailableError, "no quorum" # not sent anywhere
      when 2 then super(key, **options).tap { raise Leasehold::TimeoutError, "no answer" } # released, reply lost
      else super(key, **options)
      end
    end
    assert_raises(Leasehold::UnavailableError) { lock.release }
    assert @memory.lock_info("release-retry")[:held]
    assert_raises(Leasehold::TimeoutError) { lock.release }
    refute @memory.lock_info("release-retry")[:held]
    assert lock.release, "the retry gets the first result"
    refute lock.release, "nothing left to release"
    assert_equal 3, ids.size
    assert_equal 1, ids.uniq.size
    refute_nil ids.first
  end

  # Every acquire carries a request id of its own; a campaign keeps one across
  # its retries after unavailable/timeout (a grant that raced the disconnect is
  # then its own) and takes a new one after name_taken (a wait that ran out).
  def test_acquires_and_campaigns_send_request_ids
    ids = []
    @memory.define_singleton_method(:acquire_lock) do |key, **options|
      ids << options[:request_id]
      super(key, **options)
    end
    lock = @memory.lock("with-id")
    lock.acquire
    lock.release
    lock.acquire
    lock.release
    assert_equal 2, ids.compact.uniq.size

    ids.clear
    errors = [Leasehold::UnavailableError.new("no quorum"), Leasehold::TimeoutError.new("no answer"),
              Leasehold::NameTakenError.new("taken")]
    @memory.define_singleton_method(:register_name) do |name, **options|
      ids << options[:request_id]
      error = errors.shift
      raise error if error

      super(name, **options)
    end
    leader = @memory.election("campaign-ids", "v", ttl: 0.9).campaign
    assert leader.leader?
    assert_equal 4, ids.size
    refute_nil ids[0]
    assert_equal [ids[0]] * 3, ids[0, 3], "the same id across unavailable and timeout"
    refute_equal ids[2], ids[3], "a new id after name_taken"
    leader.resign
  end

  def test_shared_lease_holds_several_locks
    lease = @memory.grant(ttl: 1, owner: "worker")
    a = @memory.lock("s/a", lease_id: lease[:lease_id])
    b = @memory.lock("s/b", lease_id: lease[:lease_id])
    a.acquire
    b.acquire
    assert_equal %w[s/a s/b], @memory.lease(lease[:lease_id])[:locks]
    a.release
    assert_equal %w[s/b], @memory.lease(lease[:lease_id])[:locks]
    assert_equal({ revoked: true, released: %w[s/b] }, @memory.revoke(lease[:lease_id]))
    wait_until("b lost") { !b.held? }
  end

  def test_names_register_whereis_and_handover
    first = @memory.register("svc/leader", "10.0.0.1", ttl: 1)
    assert_equal "10.0.0.1", @memory.whereis("svc/leader")[:value]
    assert_raises(Leasehold::NameTakenError) { @memory.register("svc/leader", "10.0.0.2") }
    elected = Queue.new
    candidate = Thread.new { @memory.election("svc/leader", "10.0.0.2").lead { |l| elected << l.token } }
    wait_until("queued") { @memory.observe("svc/leader", timeout: 0)[:queue].size == 1 }
    first.proclaim("10.0.0.1:8080")
    assert_equal "10.0.0.1:8080", @memory.leader("svc/leader")[:value]
    first.resign
    assert_operator elected.pop, :>, first.token
    candidate.value
    assert_nil @memory.whereis("svc/leader")
  end

  def test_observe_reports_a_vacancy
    name = @memory.register("obs", "v", ttl: 1)
    index = @memory.observe("obs", timeout: 0)[:index]
    observer = Thread.new { @memory.observe("obs", index: index, timeout: 5) }
    name.resign
    state = observer.value
    refute state[:registered]
    assert_equal [name.owner, "released"], state[:vacated].values_at(:owner, :reason)
  end

  def test_a_retried_request_id_returns_the_first_result
    first = @memory.acquire_lock("idem", owner: "A", ttl: 5, request_id: "r-1")
    again = @memory.acquire_lock("idem", owner: "A", ttl: 5, request_id: "r-1")
    assert_equal first, again
    assert_raises(Leasehold::LockHeldError) { @memory.acquire_lock("idem", owner: "A", ttl: 5, request_id: "r-2") }
  end

  def test_bad_input_is_refused_like_the_server_does
    { "owner" => -> { @memory.lock("k", owner: "").acquire },
      "ttl_ms" => -> { @memory.lock("k", ttl: 0).acquire },
      "key" => -> { @memory.lock("a\u0001").acquire } }.each do |field, call|
      error = assert_raises(Leasehold::InvalidArgumentError, &call)
      assert error.message.start_with?("#{field}: "), error.message
    end
    assert_raises(ArgumentError) { @memory.lock("k", ttl: 3, heartbeat: 2).acquire }
  end
end
