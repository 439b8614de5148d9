# frozen_string_literal: true

module Leasehold
  # The client-deadline rule of SPEC §2 rule 5, as plain arithmetic on the
  # monotonic clock (seconds as Floats):
  #
  #   valid_until = t_send + ttl × (1 − drift)
  #
  # where +t_send+ is when the last request that refreshed the lease (the acquire,
  # or a keepalive) was *sent*, not when its reply came. Renewal runs every
  # ttl / 3 by default and must be more often than every ttl / 2.
  module Deadline
    # Assumed clock-rate difference between this process and the cluster (1 %).
    DRIFT = 0.01

    module_function

    # Now on the monotonic clock, in seconds. Wall-clock jumps do not move it.
    def now
      Process.clock_gettime(Process::CLOCK_MONOTONIC)
    end

    # How long a successful refresh lets this side believe it holds: ttl × (1 − drift).
    def valid_for(ttl, drift = DRIFT)
      ttl * (1 - drift)
    end

    # The client deadline of a hold whose last refresh was sent at +t_send+.
    def valid_until(t_send, ttl, drift = DRIFT)
      t_send + valid_for(ttl, drift)
    end

    # The renewal period: +heartbeat+ if given, else ttl / 3. Raises ArgumentError
    # unless 0 < heartbeat < ttl / 2 and 0 <= drift < 0.5.
    def heartbeat(ttl, heartbeat = nil, drift = DRIFT)
      period = heartbeat || ttl / 3.0
      unless period.positive? && period * 2 < ttl
        raise ArgumentError, "heartbeat (#{period}s) must be above zero and below ttl/2 (#{ttl / 2.0}s)"
      end
      raise ArgumentError, "drift (#{drift}) must be in [0, 0.5)" unless drift >= 0 && drift < 0.5

      period
    end

    # Seconds (Float) to whole milliseconds for the wire.
    def ms(seconds)
      (seconds * 1000).round
    end
  end
end
