# frozen_string_literal: true

require_relative "test_helper"

# The client-deadline arithmetic (SPEC §2 rule 5) and the renewal loop that
# applies it, driven by plain callables (no server).
class DeadlineTest < Minitest::Test
  include TestSupport

  D = Leasehold::Deadline

  def test_valid_until_is_t_send_plus_ttl_less_drift
    assert_in_delta 129.7, D.valid_until(100.0, 30), 1e-9
    assert_in_delta 101.485, D.valid_until(100.0, 1.5), 1e-9
    assert_in_delta 110.0, D.valid_until(100.0, 10, 0), 1e-9
    assert_in_delta 105.0, D.valid_until(100.0, 10, 0.5), 1e-9
    assert_in_delta 29.7, D.valid_for(30), 1e-9
  end

  def test_heartbeat_defaults_to_a_third_and_must_stay_below_half_the_ttl
    assert_in_delta 1.0, D.heartbeat(3), 1e-9
    assert_in_delta 10.0, D.heartbeat(30), 1e-9
    assert_in_delta 1.499, D.heartbeat(3, 1.499), 1e-9
    assert_raises(ArgumentError) { D.heartbeat(3, 1.5) }
    assert_raises(ArgumentError) { D.heartbeat(3, 0) }
    assert_raises(ArgumentError) { D.heartbeat(3, nil, 0.5) }
    assert_raises(ArgumentError) { D.heartbeat(3, nil, -0.1) }
  end

  def test_seconds_become_whole_milliseconds
    assert_equal 1500, D.ms(1.5)
    assert_equal 30_000, D.ms(30)
    assert_equal 1, D.ms(0.0014)
  end

  def test_now_is_monotonic
    a = D.now
    b = D.now
    assert_operator b, :>=, a
  end

  # A renewal that takes 0.2 s to answer: the deadline counts from when it was
  # sent, not from when the reply came.
  def test_a_renewal_moves_the_deadline_from_its_send_time
    sends = Queue.new
    renewer = renewer(ttl: 0.9, renew: lambda { |budget|
      sends << D.now
      if sends.size > 1 # later renewals hang until the deadline
        sleep budget
        raise Leasehold::TimeoutError, "no answer"
      end
      sleep 0.2
    })
    first = renewer.valid_until
    sent = sends.pop
    wait_until("the renewal answered") { renewer.valid_until != first }
    # Anchored at the send (a few µs before the lambda ran), not the reply (0.2 s later).
    assert_operator renewer.valid_until, :<=, D.valid_until(sent, 0.9)
    assert_in_delta D.valid_until(sent, 0.9), renewer.valid_until, 0.01
    assert renewer.held?
    assert_equal :held, renewer.state
  ensure
    renewer&.stop
  end

  # Renewals keep failing: jeopardy first, then lost (reason :unreachable) at the
  # deadline of the grant, never before it.
  def test_failing_renewals_mean_jeopardy_then_loss_at_the_deadline
    losses = Queue.new
    t_send = D.now
    renewer = renewer(ttl: 0.9, t_send: t_send, on_lost: ->(e) { losses << [e, D.now] },
                      renew: ->(_budget) { raise Leasehold::UnavailableError, "no quorum" })
    wait_until("jeopardy") { renewer.state == :jeopardy }
    assert renewer.held?, "still held in jeopardy"
    error, lost_at = losses.pop
    deadline = D.valid_until(t_send, 0.9)
    assert_operator lost_at, :>=, deadline
    assert_operator lost_at, :<, deadline + 0.2
    assert_equal :unreachable, error.reason
    assert_match(/no quorum/, error.message)
    refute renewer.held?
    assert_equal :lost, renewer.state
  end

  # A renewal that never answers before the deadline (a paused cluster) is given
  # the time left as its budget; the loss comes at the deadline.
  def test_a_hanging_renewal_gets_the_time_left_and_loss_comes_at_the_deadline
    budgets = Queue.new
    losses = Queue.new
    t_send = D.now
    renewer(ttl: 0.9, t_send: t_send, on_lost: ->(e) { losses << [e, D.now] }, renew: lambda { |budget|
      budgets << budget
      sleep budget
      raise Leasehold::TimeoutError, "no answer"
    })
    assert_in_delta D.valid_until(t_send, 0.9) - (t_send + 0.3), budgets.pop, 0.05
    error, lost_at = losses.pop
    assert_operator lost_at, :>=, D.valid_until(t_send, 0.9)
    assert_equal :unreachable, error.reason
  end

  def test_the_cluster_saying_the_hold_is_gone_is_a_loss_at_once
    losses = Queue.new
    renewer(ttl: 3, heartbeat: 0.05, on_lost: ->(e) { losses << e }, renew: lambda { |_|
      raise Leasehold::NotOwnerError.new("taken over", details: { reason: "stolen" })
    })
    error = losses.pop
    assert_equal :stolen, error.reason
    renewer(ttl: 3, heartbeat: 0.05, on_lost: ->(e) { losses << e },
            renew: ->(_) { raise Leasehold::LeaseNotFoundError, "lease 7 not found" })
    assert_equal :expired, losses.pop.reason
  end

  def test_stop_heartbeat_renews_no_more_and_reports_loss_at_the_deadline
    renewals = 0
    losses = Queue.new
    t_send = D.now
    renewer = renewer(ttl: 0.6, t_send: t_send, on_lost: ->(e) { losses << [e, D.now] },
                      renew: ->(_) { renewals += 1 })
    renewer.stop_heartbeat
    error, lost_at = losses.pop
    assert_equal 0, renewals
    assert_equal :heartbeat_stopped, error.reason
    assert_operator lost_at, :>=, D.valid_until(t_send, 0.6)
  end

  def test_stop_ends_renewal_without_a_loss_report
    losses = []
    renewals = Queue.new
    renewer = renewer(ttl: 0.6, heartbeat: 0.05, on_lost: ->(e) { losses << e }, renew: ->(_) { renewals << 1 })
    renewals.pop
    renewer.stop
    count = renewals.size
    sleep 0.7 # past the deadline the renewer would have had
    assert_operator renewals.size, :<=, count + 1
    assert_empty losses
    assert_equal :stopped, renewer.state
    refute renewer.held?
  end

  # A success recorded after the deadline passed (the loop's own renewal hung
  # past it) or after the loss was reported does not bring the hold back.
  def test_a_late_success_does_not_bring_a_lapsed_hold_back
    hung = Queue.new
    losses = Queue.new
    renewer = renewer(ttl: 0.3, on_lost: ->(e) { losses << e }, renew: ->(_) { hung.pop })
    sent = D.now
    wait_until("the deadline passed") { D.now >= renewer.valid_until }
    deadline = renewer.valid_until
    refute renewer.renewed(sent), "a success after the deadline is too late"
    assert_equal deadline, renewer.valid_until
    refute renewer.held?
    hung << true # the loop's renewal answers, too late as well
    assert_equal :unreachable, losses.pop.reason
    assert_equal deadline, renewer.valid_until

    gone = renewer(ttl: 3, heartbeat: 0.05, on_lost: ->(e) { losses << e },
                   renew: ->(_) { raise Leasehold::LeaseNotFoundError, "lease 7 not found" })
    assert_equal :expired, losses.pop.reason
    deadline = gone.valid_until
    assert_operator deadline, :>, D.now
    refute gone.renewed(D.now), "a success after the loss was reported is too late"
    assert_equal deadline, gone.valid_until
    assert_equal :lost, gone.state
    refute gone.held?
  ensure
    hung&.push(true)
  end

  # A shorter TTL lowers the deadline before its request is sent (the cluster may
  # apply it at any moment after that), and its success sets the deadline from
  # the send time and the new TTL, never keeping a longer one. A longer TTL counts
  # only once it was answered.
  def test_a_ttl_change_moves_the_deadline_safely
    renewer = renewer(ttl: 3, renew: ->(_) {})
    sent = D.now
    renewer.changing_ttl(sent, 0.6)
    assert_in_delta D.valid_until(sent, 0.6), renewer.valid_until, 1e-9
    assert_in_delta 0.1, renewer.attempt_timeout, 1e-9 # the renewal period follows the TTL
    assert renewer.renewed(sent, ttl: 0.6)
    assert_in_delta D.valid_until(sent, 0.6), renewer.valid_until, 1e-9

    sent = D.now
    renewer.changing_ttl(sent, 5)
    assert_operator renewer.valid_until, :<, sent + 0.6, "not raised before the reply"
    assert renewer.renewed(sent, ttl: 5)
    assert_in_delta D.valid_until(sent, 5), renewer.valid_until, 1e-9
  ensure
    renewer&.stop
  end

  # Each renewal try at one endpoint is bounded by half a heartbeat, at least 100 ms.
  def test_a_renewal_try_at_one_endpoint_gets_half_a_heartbeat
    assert_in_delta 0.5, renewer(ttl: 3, renew: ->(_) {}).tap(&:stop).attempt_timeout, 1e-9
    assert_in_delta 0.1, renewer(ttl: 0.3, renew: ->(_) {}).tap(&:stop).attempt_timeout, 1e-9
  end

  private

  def renewer(ttl:, renew:, t_send: D.now, heartbeat: nil, on_lost: ->(_) {})
    Leasehold::Renewer.new(t_send: t_send, ttl: ttl, heartbeat: D.heartbeat(ttl, heartbeat), renew: renew,
                           on_lost: on_lost, label: "test").start
  end
end
