# frozen_string_literal: true

module Leasehold
  # Keeps one hold alive from a background thread and decides, by the
  # client-deadline rule ({Deadline}), until when this side may believe it holds.
  #
  # Every +heartbeat+ seconds it calls +renew+ (which raises a {Leasehold::Error}
  # on failure) with the seconds left until the deadline, to bound the request
  # (each try at one endpoint is bounded shorter still: {#attempt_timeout}).
  # A success moves the deadline to the time that renewal was *sent* plus
  # ttl × (1 − drift); a success that comes back after the deadline passed is
  # too late and changes nothing. A failure puts it in :jeopardy and it retries sooner
  # (every heartbeat / 4). It reports loss once, through +on_lost+ with a
  # {LockLost}, when the cluster says the hold is gone (404 lease_not_found /
  # name_not_found, 409 not_owner) or when the deadline passes without a
  # successful renewal. Used by {Lock}; you rarely need it directly.
  class Renewer
    # Errors with which the cluster says the hold no longer exists.
    GONE = [NotOwnerError, NotFoundError].freeze

    # :held, :jeopardy (renewals failing, deadline not passed), :lost or :stopped.
    attr_reader :state

    # The {LockLost} that was reported, or nil.
    attr_reader :lost

    # +t_send+: monotonic time the granting request was sent; +ttl+, +heartbeat+
    # in seconds; +label+ names the hold in log lines; +renew+ is called as
    # +renew.call(budget_seconds)+; +on_lost+ as +on_lost.call(lock_lost)+.
    def initialize(t_send:, ttl:, heartbeat:, renew:, on_lost:, drift: Deadline::DRIFT,
                   logger: Leasehold.logger, label: "hold")
      @ttl = ttl
      @heartbeat = heartbeat
      @drift = drift
      @renew = renew
      @on_lost = on_lost
      @logger = logger
      @label = label
      @valid_until = Deadline.valid_until(t_send, ttl, drift)
      @next = t_send + heartbeat
      @state = :held
      @lost = nil
      @stopped = false
      @heartbeat_stopped = false
      @mutex = Mutex.new
      @wakeup = ConditionVariable.new
    end

    # Start the renewal thread; returns self.
    def start
      @thread = Thread.new { run }
      @thread.name = "leasehold-renewer #{@label}"
      self
    end

    # The client deadline (monotonic seconds): past it the hold is not believed.
    def valid_until
      @mutex.synchronize { @valid_until }
    end

    # True while the hold is believed: not lost, not stopped, deadline not passed.
    def held?
      @mutex.synchronize { (@state == :held || @state == :jeopardy) && Deadline.now < @valid_until }
    end

    # Bound of one renewal try at one endpoint: half the renewal period, at least
    # 100 ms, so that a hung node leaves time to try the others before the deadline.
    def attempt_timeout
      @mutex.synchronize { [@heartbeat / 2.0, 0.1].max }
    end

    # Call before sending, at +t_send+, a refresh that gives the lease +ttl+. A
    # shorter TTL counts at once, as the cluster may apply it any time after the
    # send: the TTL, the renewal period and the deadline (to at most
    # t_send + ttl × (1 − drift)) are lowered now. A longer one counts only once
    # the refresh succeeded ({#renewed}).
    def changing_ttl(t_send, ttl)
      return unless ttl.positive? # the cluster refuses it (invalid_argument): nothing changes

      heartbeat = Deadline.heartbeat(ttl, nil, @drift)
      @mutex.synchronize do
        return unless ttl < @ttl

        @ttl = ttl
        @heartbeat = heartbeat
        @valid_until = [@valid_until, Deadline.valid_until(t_send, ttl, @drift)].min
        @next = [@next, t_send + heartbeat].min
        @wakeup.signal
      end
    end

    # Record a successful refresh made outside the loop (a {Lock#refresh}), sent
    # at +t_send+, possibly with a new +ttl+ (announced first with
    # {#changing_ttl}): the deadline becomes t_send + ttl × (1 − drift) and the
    # renewal period follows the TTL. Returns false, changing nothing, when it
    # comes too late: the hold was lost or stopped, or its deadline passed.
    def renewed(t_send, ttl: nil)
      heartbeat = ttl && Deadline.heartbeat(ttl, nil, @drift)
      @mutex.synchronize do
        return false unless record_success(t_send)

        if ttl
          @ttl = ttl
          @heartbeat = heartbeat
          # Exactly this refresh's deadline: one with the old TTL may be longer.
          @valid_until = Deadline.valid_until(t_send, ttl, @drift)
        end
        @next = t_send + @heartbeat
        @wakeup.signal
        true
      end
    end

    # Renew no more, but keep believing the hold until the deadline, then
    # report the loss (reason :heartbeat_stopped).
    def stop_heartbeat
      @mutex.synchronize do
        @heartbeat_stopped = true
        @wakeup.signal
      end
    end

    # Stop for good (the hold was released): no renewal, no loss report.
    def stop
      @mutex.synchronize do
        @stopped = true
        @state = :stopped unless @state == :lost
        @wakeup.signal
      end
    end

    private

    def run
      loop do
        case next_step
        when :stop then return
        when :deadline
          return lose(:heartbeat_stopped, "the heartbeat was stopped and the client deadline passed") if @heartbeat_stopped

          return lose(:unreachable, "renewals failed until the client deadline passed#{@last_error && ": #{@last_error}"}")
        when :renew
          return unless renew_once
        end
      end
    end

    # Sleep until the next renewal or the deadline; which one came (or :stop).
    def next_step
      @mutex.synchronize do
        loop do
          return :stop if @stopped

          now = Deadline.now
          return :deadline if now >= @valid_until
          return :renew if !@heartbeat_stopped && now >= @next

          wake_at = @heartbeat_stopped ? @valid_until : [@next, @valid_until].min
          @wakeup.wait(@mutex, wake_at - now)
        end
      end
    end

    # One renewal; false when the loop should end (lost or stopped).
    def renew_once
      sent = Deadline.now
      ttl, valid_until = @mutex.synchronize { [@ttl, @valid_until] }
      @renew.call(valid_until - sent)
      @mutex.synchronize do
        return false if @stopped

        recovered = @state == :jeopardy
        # Too late (the deadline passed): the loop reports the loss next.
        if record_success(sent, ttl)
          @next = sent + @heartbeat
          @logger.info("#{@label}: renewed again") if recovered
        end
      end
      true
    rescue *GONE => e
      lose(e.is_a?(NotOwnerError) && e.reason == "stolen" ? :stolen : :expired,
           "the hold ended on the cluster: #{e.message}")
      false
    rescue StandardError => e
      @last_error = "#{e.class}: #{e.message}"
      entering = @mutex.synchronize do
        return false if @stopped

        @next = Deadline.now + [@heartbeat / 4, 0.01].max
        (@state != :jeopardy).tap { @state = :jeopardy }
      end
      message = "#{@label}: renewal failed (in jeopardy until the client deadline): #{@last_error}"
      entering ? @logger.warn(message) : @logger.info(message)
      true
    end

    # Under @mutex: count a renewal sent at +t_send+ that succeeded, unless it
    # comes too late (lost, stopped, or the deadline passed: the hold was not
    # believed in between and must not come back). The TTL is the smaller of
    # +ttl_at_send+ and the current one (a shorter TTL may have been set
    # meanwhile). True if counted.
    def record_success(t_send, ttl_at_send = @ttl)
      return false if @stopped || @state == :lost || Deadline.now >= @valid_until

      @valid_until = [@valid_until, Deadline.valid_until(t_send, [ttl_at_send, @ttl].min, @drift)].max
      @state = :held
      true
    end

    def lose(reason, message)
      error = @mutex.synchronize do
        return if @stopped || @lost

        @state = :lost
        @lost = LockLost.new("#{@label}: #{message}", reason: reason)
      end
      @logger.warn(error.message)
      begin
        @on_lost.call(error)
      rescue StandardError => e
        @logger.error("#{@label}: the on_lost callback raised #{e.class}: #{e.message}")
      end
    end
  end
end
