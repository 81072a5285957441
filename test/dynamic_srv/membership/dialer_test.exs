defmodule DynamicSrv.Membership.DialerTest do
  # The dialer's decisions, as pure functions of what is wanted, connected
  # and in flight, and of the time.
  use ExUnit.Case, async: true

  alias DynamicSrv.Membership.Dialer

  @nodes [:c@h, :a@h, :d@h, :b@h]

  defp dialer(opts \\ []),
    do:
      [one_side: true, grace: 100]
      |> Keyword.merge(opts)
      |> Dialer.new()
      |> Dialer.want(@nodes, 0)

  defp start(dialer, nodes, now),
    do: Enum.reduce(nodes, dialer, &Dialer.started(&2, &1, make_ref(), self(), now))

  test "alone, it joins through the first node by name, one setup at a time" do
    {[:a@h], d} = Dialer.next(dialer(), [], 0)
    d = start(d, [:a@h], 0)
    # Nothing more while that setup is in flight, however long it waits.
    assert {[], _} = Dialer.next(d, [], 5_000)
  end

  test "alone, a node whose setup failed is passed over until the next poll" do
    {[:a@h], d} = Dialer.next(dialer(), [], 0)
    ref = make_ref()
    d = Dialer.started(d, :a@h, ref, self(), 0)
    {d, :first_failure} = Dialer.finished(d, ref, :failed, 10)
    assert {[:b@h], d} = Dialer.next(d, [], 10)
    assert {[:a@h], _} = d |> Dialer.retry() |> Dialer.next([], 20)
  end

  test "joined, it leaves the rest to global while its connections grow" do
    {_, d} = Dialer.next(dialer(), [:a@h], 0)
    assert {[], d} = Dialer.next(d, [:a@h], 90)
    # A new connection (global's) is progress: the grace starts again.
    assert {[], d} = Dialer.next(d, [:a@h, :c@h], 95)
    assert {[], d} = Dialer.next(d, [:a@h, :c@h], 150)
    # No growth for the grace: a node still not connected is dialled.
    assert {[:b@h], _} = Dialer.next(d, [:a@h, :c@h], 195)
  end

  test "stalled, with global's transitive connects: one setup at a time, to the first by name" do
    {_, d} = Dialer.next(dialer(), [:a@h], 0)
    assert {[:b@h], d} = Dialer.next(d, [:a@h], 200)
    d = start(d, [:b@h], 200)
    assert {[], _} = Dialer.next(d, [:a@h], 300)
  end

  test "stalled, without them: setups in flight are bounded by the window" do
    {_, d} = Dialer.next(dialer(transitive: false), [:a@h], 0)
    assert {dialled, _} = Dialer.next(d, [:a@h], 200)
    assert Enum.sort(dialled) == [:b@h, :c@h, :d@h]
    d = %{d | window: 1}
    assert {[one], d} = Dialer.next(d, [:a@h], 200)
    d = start(d, [one], 200)
    assert {[], _} = Dialer.next(d, [:a@h], 300)
  end

  test "without distribution, every node is dialled at once" do
    {dialled, _} = Dialer.next(dialer(one_side: false), [], 0)
    assert Enum.sort(dialled) == Enum.sort(@nodes)
  end
end
